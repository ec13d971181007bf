"""A private dockerd for the benchmarks' docker baseline: started, driven through its CLI, removed.

Debian's docker.io (``scripts/install-system.sh``) runs here as a daemon of the benchmark's own:
its own data root, exec root, socket and pidfile under one temporary directory, its own
supervised containerd below them, no default bridge, an address pool of its own (a free /16),
one bridge network per environment (as compose makes one per project) with bridges named
``dkXXXX-N``, and nothing in the host's iptables (``--iptables=false``): dockerd's iptables mode
writes host-wide chains (DOCKER, DOCKER-USER, DOCKER-ISOLATION-*) that every docker on the host
shares and may set the FORWARD policy, which a benchmark must not touch while others run.
Published ports are then served by docker-proxy alone (docker's userland proxy, which serves
loopback clients in every mode); containers reach each other over their bridge, by name through
dockerd's embedded DNS. At the end every container, volume and network is removed, dockerd
stops, its mounts are undone and its directory deleted; what is left is counted like the
project's own leftovers (bridges, processes naming the directory, docker-proxy processes aimed
at the pool, mounts).
"""

from __future__ import annotations

import ipaddress
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from bench import leftovers
from tests.support.daemon import free_pool
from tests.support.processes import descendants, end, processes_naming, shims_of, unmount_under


class PrivateDockerd:
    """One private dockerd and the networks made through it; use as a context manager."""

    def __init__(self, parent: Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="bench-docker-", dir=parent or "/tmp"))
        self.bridge = "dk" + secrets.token_hex(2)
        self.networks: list[str] = []
        self.pool = free_pool()
        self.socket = self.root / "docker.sock"
        self.argv = ["docker", "-H", f"unix://{self.socket}"]
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrivateDockerd:
        if shutil.which("dockerd") is None or shutil.which("docker") is None:
            raise SystemExit("dockerd or docker missing: install docker.io (scripts/install-system.sh)")
        with (self.root / "dockerd.log").open("wb") as log:
            self.process = subprocess.Popen(
                [
                    "dockerd",
                    "--data-root", str(self.root / "data"),
                    "--exec-root", str(self.root / "exec"),
                    "--pidfile", str(self.root / "docker.pid"),
                    "-H", f"unix://{self.socket}",
                    "--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false",
                    "--default-address-pool", f"base={self.pool},size=24",
                    "--log-level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while subprocess.run([*self.argv, "version"], capture_output=True).returncode != 0:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("private dockerd did not serve: " + self.log()[-2000:])
                time.sleep(0.2)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log(self) -> str:
        """dockerd's own output."""
        path = self.root / "dockerd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def run(self, *args: str, timeout: float = 120) -> str:
        """``docker ARGS`` against this daemon; its stdout, or SystemExit with its stderr."""
        done = subprocess.run([*self.argv, *args], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise SystemExit(f"docker {' '.join(args[:3])}... failed: {done.stderr.strip()[-1000:]}")
        return done.stdout.strip()

    def create_network(self, index: int) -> str:
        """A network of its own (compose makes one per project): bridge ``dkXXXX-INDEX``, the pool's INDEX-th /24."""
        subnet = list(ipaddress.IPv4Network(self.pool).subnets(new_prefix=24))[index]
        name = f"{self.bridge}-{index}"
        self.run(
            "network", "create", "--driver", "bridge", "--subnet", str(subnet),
            "-o", f"com.docker.network.bridge.name={name}", name,
        )  # fmt: skip
        self.networks.append(name)
        return name

    def pid(self) -> int:
        """dockerd's PID."""
        assert self.process is not None
        return self.process.pid

    def containerd_pid(self) -> int:
        """The containerd dockerd supervises (its child, serving under the exec root)."""
        for pid in descendants(self.pid()):
            if _name(pid) == "containerd":
                return pid
        raise SystemExit("the private dockerd runs no containerd of its own")

    def shims(self) -> list[int]:
        """The shims of dockerd's containerd (one per container)."""
        return list(shims_of(str(self.root / "exec" / "containerd" / "containerd.sock")))

    def proxies(self) -> list[int]:
        """docker-proxy processes forwarding to an address of this daemon's pool."""
        pool = ipaddress.IPv4Network(self.pool)
        found = []
        for pid, line in processes_naming("docker-proxy").items():
            args = line.split()
            if "-container-ip" in args and _in(args[args.index("-container-ip") + 1], pool):
                found.append(pid)
        return found

    def close(self) -> None:
        """Remove every container, volume and network, stop dockerd, undo its mounts and delete its files."""
        if self.process is not None and self.process.poll() is None:
            ids = subprocess.run([*self.argv, "ps", "-aq"], capture_output=True, text=True, timeout=60).stdout.split()
            for start in range(0, len(ids), 50):
                chunk = ids[start : start + 50]
                subprocess.run([*self.argv, "rm", "-f", "-v", *chunk], capture_output=True, timeout=300)
            subprocess.run([*self.argv, "volume", "prune", "-f"], capture_output=True, timeout=120)
            for start in range(0, len(self.networks), 50):
                chunk = self.networks[start : start + 50]
                subprocess.run([*self.argv, "network", "rm", *chunk], capture_output=True, timeout=300)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        # A dockerd that was killed leaves its containerd, shims and proxies: end them by PID.
        end([*processes_naming(str(self.root) + "/"), *self.proxies()])
        unmount_under(self.root)
        for name in self.networks:
            subprocess.run(["ip", "link", "delete", name], capture_output=True, timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)

    def leftovers(self) -> int:
        """Print and return what is left (after ``close``): bridge, processes, mounts, proxies."""
        found = self.proxies()
        if found:
            print(f"docker-proxy processes left: {len(found)}", flush=True)
        return len(found) + leftovers.report([self.bridge], [self.root])


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _in(address: str, pool: ipaddress.IPv4Network) -> bool:
    try:
        return ipaddress.IPv4Address(address) in pool
    except ValueError:
        return False
