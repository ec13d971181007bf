"""Run every benchmark in turn (``make bench``): each prints its figures as ratios to a baseline.

Each benchmark is its own module with its own options (``python -m bench.NAME --help``); here each
runs with its defaults in a child process, so that one failing does not stop the others, and the
exit status says whether all of them finished. ``python -m bench NAME ...`` runs only those named;
``--quick`` runs the large ones (hundreds of environments, minutes each) at small sizes
(``make bench-quick``). Every benchmark prints the count of what it left behind (0 expected).
"""

from __future__ import annotations

import subprocess
import sys
import time

BENCHMARKS = [
    "runtime_start",
    "network",
    "probes",
    "env_create",
    "template_create",
    "clone",
    "updates",
    "adopt",
    "burst",
    "density",
    "api",
    "metrics_scrape",
    "wake",
    "fleet",
]
QUICK = {
    "env_create": ["--runs", "2", "--parallel", "5"],
    "template_create": ["--runs", "3"],
    "clone": ["--size-mb", "100"],
    "adopt": ["--envs", "20", "--runs", "1"],
    "burst": ["--envs", "20"],
    "density": ["--envs", "5"],
    "wake": ["--runs", "1"],
    "fleet": ["--runs", "2", "--per-node", "3"],
}
"""Sizes for a quick run; the defaults measure what the issues quote (20, 100 and 200 environments)."""


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    argv = [a for a in argv if a != "--quick"]
    chosen = argv or BENCHMARKS
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    results: dict[str, str] = {}
    for name in chosen:
        print(f"== bench.{name}", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-m", f"bench.{name}", *(QUICK.get(name, []) if quick else [])])
        results[name] = f"{'ok' if code == 0 else f'failed (exit {code})'} in {time.monotonic() - started:.0f} s"
    print("== summary")
    for name, outcome in results.items():
        print(f"{name}: {outcome}")
    return 0 if all(outcome.startswith("ok") for outcome in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
