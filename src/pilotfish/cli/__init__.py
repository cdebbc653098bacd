"""The `pilotfish` command."""
