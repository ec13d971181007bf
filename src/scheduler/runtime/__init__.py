"""Container runtimes: the ``ContainerRuntime`` Protocol and its containerd implementation."""
