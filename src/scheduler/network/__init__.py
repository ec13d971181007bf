"""Environment networks: bridges, namespaces, service VIPs, published ports (CNI + iptables)."""

from scheduler.network.base import Attachment, EnvNetworkInfo, NetworkManager, ServiceInfo, ServicePort
from scheduler.network.cni import CniNetwork

__all__ = ["Attachment", "CniNetwork", "EnvNetworkInfo", "NetworkManager", "ServiceInfo", "ServicePort"]
