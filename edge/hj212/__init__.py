"""HJ 212 data-logger gateway: codec, code tables and the TCP server."""
