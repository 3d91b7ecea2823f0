"""JT/T 808 (road transport vehicle terminals) gateway: codec, sessions and the TCP server."""
