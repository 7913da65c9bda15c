"""Bedrock Agent Runtime: client factory, pure stream reader, returnControl model."""
