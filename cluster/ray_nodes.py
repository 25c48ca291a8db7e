"""Wait until a Ray cluster has its nodes: ``python -m cluster.ray_nodes wait ADDRESS --nodes N``.

Used by the Slurm prep script between ``ray start`` on every node and the prep job, so the job
does not start on a half-formed cluster. Exits 0 once N nodes are alive, 1 after ``--timeout``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

log = logging.getLogger("cluster.ray_nodes")


def wait_for_nodes(address: str, nodes: int, timeout: float) -> bool:
    """Connect to the cluster at ``address`` (GCS host:port), retrying until it answers, then poll
    its node table until ``nodes`` are alive; False once ``timeout`` seconds have passed."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    deadline = time.monotonic() + timeout
    while not ray.is_initialized():
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except Exception:
            if time.monotonic() > deadline:
                log.error("no ray cluster answered at %s in %.0fs", address, timeout)
                return False
            time.sleep(1.0)
    try:
        while time.monotonic() < deadline:
            seen = sum(1 for n in ray.nodes() if n.get("Alive"))
            if seen >= nodes:
                log.info("ray cluster at %s has %d node(s)", address, seen)
                return True
            time.sleep(1.0)
    finally:
        ray.shutdown()
    log.error("ray cluster at %s did not reach %d node(s) in %.0fs", address, nodes, timeout)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.ray_nodes", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    wait = sub.add_parser("wait", help="block until the cluster has N alive nodes")
    wait.add_argument("address", help="GCS address, host:port")
    wait.add_argument("--nodes", type=int, default=1)
    wait.add_argument("--timeout", type=float, default=300.0, help="seconds (default: 300)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return 0 if wait_for_nodes(args.address, args.nodes, args.timeout) else 1


if __name__ == "__main__":
    sys.exit(main())
