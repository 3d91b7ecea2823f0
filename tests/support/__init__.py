"""Test support shared by the suites: the console stack (a whole platform for console tests) and the in-memory MQTT fake."""
