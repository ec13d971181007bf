"""Environment networks: bridges, namespaces, service VIPs, published ports (CNI + iptables).

The package exports the Protocol and its values only: importing it must not load the CNI
implementation, which only the daemon (the composition root) picks.
"""

from scheduler.network.base import Attachment, EnvNetworkInfo, NetworkManager, ServiceInfo, ServicePort

__all__ = ["Attachment", "EnvNetworkInfo", "NetworkManager", "ServiceInfo", "ServicePort"]
