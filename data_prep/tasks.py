"""Running one function over many arguments: as Ray tasks when a Ray session is up, else here.

The prep's steps (writing shards, text dedup's signatures and merge) are functions of one
argument tuple each. :func:`run_tasks` hands them to Ray with a bounded number in flight (the
driver holds at most :func:`in_flight` task references, and each wait looks at those alone: a
wait over every pending task made the driver loop quadratic in the task count), retrying a task
whose worker died (a lost node, the OOM killer) or that raised an ``OSError``. Without a Ray
session (a small prep, a test calling a step directly) the same calls run in this process.
"""

from __future__ import annotations

import itertools
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

# Runs of a task after its first whose worker died or which raised an OSError.
TASK_RETRIES = 3


def run_tasks(fn: Callable, calls: Iterable[tuple], memory_mb: int = 0) -> Iterator[Any]:
    """``fn(*args)`` for each ``args`` of ``calls``, each result as it comes (in completion
    order under Ray, in call order here). ``memory_mb``: the memory each task reserves, so Ray
    starts no more tasks on a node than its memory holds (0: none reserved)."""
    # Not imported here: Ray reads its auth mode when first imported (data_prep.ray_job sets it)
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        for args in calls:
            yield fn(*args)
        return
    options = {"memory": memory_mb << 20} if memory_mb else {}
    task = ray.remote(max_retries=TASK_RETRIES, retry_exceptions=[OSError], **options)(_logged(fn))
    waiting = iter(calls)
    pending = [task.remote(*args) for args in itertools.islice(waiting, in_flight())]
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        pending += [task.remote(*args) for args in itertools.islice(waiting, 1)]
        yield ray.get(ready[0])


def in_flight() -> int:
    """How many tasks the driver keeps submitted: two per CPU of the Ray cluster, so a CPU
    that finishes finds the next task waiting."""
    import ray

    return max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))


def _logged(fn: Callable) -> Callable:
    """``fn`` with the worker's warnings formatted as the driver's (Ray copies them there)."""

    def task(*args):
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        return fn(*args)

    task.__name__ = task.__qualname__ = fn.__name__  # prefixes the worker's lines on the console
    return task
