"""containerd driven directly over its gRPC socket, with stubs generated from ``proto/containerd``."""
