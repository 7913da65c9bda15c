"""Nexus export: records, span builder, httpx client, durable outbox, background exporter."""
