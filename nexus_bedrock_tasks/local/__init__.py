"""Embedded local defaults: Bedrock Agent Runtime emulator and Nexus-compatible server."""
