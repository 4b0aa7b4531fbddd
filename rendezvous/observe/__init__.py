"""Observability: one structlog setup, Prometheus registries."""
