"""scheduler: deploys precomposed application stacks on one host by driving containerd over gRPC."""

__version__ = "0.1.0"
