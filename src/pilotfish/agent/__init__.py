"""The sidecar agent: Envoy's bootstrap, its process supervision, and its drain on shutdown.

The CLI entry point lives in ``pilotfish.agent.cli`` and is not imported here, so that
``python -m pilotfish.agent.cli`` runs cleanly.
"""
