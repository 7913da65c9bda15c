"""Local Nexus-compatible REST server with a small web UI."""
