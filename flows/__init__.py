"""Prefect flows: invocation, session, batch evaluation (thin: they compose tasks)."""
