"""Local Bedrock Agent Runtime emulator, wire-compatible with stock boto3."""
