"""`pilotfish up`: run a whole mesh from a folder of YAML on this machine."""
