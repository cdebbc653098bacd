"""Pure domain types: mesh configuration, services, endpoints, proxies. No I/O, no protobuf."""
