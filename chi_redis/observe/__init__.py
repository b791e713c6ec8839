"""Observability: metrics (later health and tracing)."""
