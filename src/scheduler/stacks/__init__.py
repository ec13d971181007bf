"""Precomposed stacks, their catalog, resolution of requests into specs, and the service graph."""
