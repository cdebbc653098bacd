"""Wiring: config folder + registry -> translation -> snapshots served to the xDS server."""
