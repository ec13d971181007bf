"""Network integration fixtures live in ``tests/support/network.py``."""

from tests.support.network import make_network

__all__ = ["make_network"]
