"""The fleet layer: nodes under etcd leases, placement by a leader, agents reconciling their own."""
