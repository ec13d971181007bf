"""Prometheus metrics: what the daemon does (recorder), what runs (collector), and the HTTP endpoint."""
