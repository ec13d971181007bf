"""The CNI network of a Linux host: see :mod:`scheduler.network.cni.network` for the design."""

from scheduler.network.cni.base import CniSettings
from scheduler.network.cni.network import CniNetwork

__all__ = ["CniNetwork", "CniSettings"]
