"""Scenario acceptance runs: device-level input through the real edge code and platform path to alerts.

A harness beside ``vigil``, not a stage: it drives devices, edge gateways, rules and alerting in one
process, so it imports all of them, and no stage imports it (tests/unit/test_import_boundaries.py).
The scenario files are rule data and stay with the packs in ``rules/scenarios/<pack>/``. See
docs/rules.md ("Scenarios") for the file format; ``vigil rules scenario`` (``scenario.cli``) runs them.
The modules: ``spec`` (the file format), ``devices`` / ``gateways`` / ``camera`` / ``modbus_adapter``
(device adapters), ``runner``, ``coverage``, ``cli``, ``errors``. Nothing is imported here, so that
building the ``vigil`` parser stays cheap.
"""
