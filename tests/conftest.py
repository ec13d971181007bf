"""Root of the test suite: shared fixtures are plugins under ``tests/support``."""

pytest_plugins: list[str] = [
    # First: the others import it.
    "tests.support.leftovers",
    "tests.support.registry",
    "tests.support.images",
    "tests.support.daemon",
    "tests.support.containerd",
    "tests.support.etcd",
    "tests.support.fleet",
]
