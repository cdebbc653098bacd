"""Telemetry, pure: requests as records, Istio's metrics, live windows, traces.

Built from what the proxies send (access-log entries, Zipkin spans); the I/O (the gRPC
access-log service, the admin routes) lives in ``controller`` and ``admin``.
"""
