"""The admin HTTP API (JSON on loopback) and the `proxy-status` view of it."""
