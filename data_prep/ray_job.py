"""Run a split's work units as Ray tasks, one shard per task, resuming finished ones.

By default the job starts its own local Ray head (``num_cpus`` from the config) with token
authentication on, listening on loopback only, and guarded so that a killed prep leaves no Ray
process behind (``data_prep.ray_reaper``); given an address (``auto`` inside a Ray job, or ``ray://host:10001``) it joins
that cluster instead. Finished units (completion records in ``.maskmill/work/``) are never redone, so a
killed job reruns to the same output.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from data_prep.corpus import SourceError
from data_prep.plan import WorkUnit
from data_prep.ray_reaper import SessionGuard, reap_stale_sessions
from data_prep.ray_token import ensure_private_token
from data_prep.shard_format import (
    SUCCESS,
    WORK_DIR,
    adopt_legacy_records,
    shard_name,
    shard_unit,
)
from data_prep.store import location
from data_prep.tasks import run_tasks
from data_prep.unread import Unread
from data_prep.writer import Encoder, UnitResult, finish_split, unit_is_done, write_unit

log = logging.getLogger(__name__)


@contextlib.contextmanager
def ray_session(num_cpus: int | None, address: str | None) -> Iterator[None]:
    """Connect to Ray for the duration of a job; start (and stop) a local head when needed."""
    # Ray reads its auth mode when imported: set it first. Token auth is on unless the user
    # chose otherwise; the local head's token file is made private (data_prep.ray_token).
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if not sys.stderr.isatty():  # workers' lines copied to a file or pipe: no colour codes
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    import ray

    if ray.is_initialized():
        yield
        return
    stack = contextlib.ExitStack()  # what a local head needs undone after ray.shutdown()
    if address:
        check_answers(address)
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
    else:
        if os.environ["RAY_AUTH_MODE"] == "token":
            ensure_private_token()
        reap_stale_sessions()
        stack.enter_context(_loopback_only())
        ray.init(
            # "local": a new head even when `ray start` left a cluster on this machine, which a
            # bare ray.init() would join.
            address="local",
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=True,
        )
        guard = SessionGuard(ray._private.worker._global_node.get_session_dir_path())
        stack.callback(guard.close)
    try:
        yield
    finally:
        ray.shutdown()
        stack.close()


ANSWER_TIMEOUT_S = 10.0


def check_answers(address: str) -> None:
    """Fail in one line, within :data:`ANSWER_TIMEOUT_S`, when ``prep.ray_address`` names a
    host and port that no server answers on (Ray itself retries such an address for minutes)."""
    host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not host or not port.isdigit():  # "auto" and other forms: Ray resolves them
        return
    try:
        socket.create_connection((host, int(port)), timeout=ANSWER_TIMEOUT_S).close()
    except OSError as err:
        raise SourceError(
            f"prep.ray_address {address}: nothing answers there ({err}); start the cluster "
            "(`ray start --head`), or leave ray_address unset for a local head"
        ) from None


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Make a one-machine head listen on loopback only. Ray binds its servers to the node's
    address, which it resolves to a reachable interface unless clusters are off, as on macOS
    and Windows (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``); read at import, so the loaded
    constant is set too. Token authentication stays on."""
    from ray._private import ray_constants

    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    before = os.environ.get(name), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[name], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before[1]
        if before[0] is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before[0]


def prepare_split(
    units: Sequence[WorkUnit],
    split_dir: Path,
    encode: Encoder,
    describe: Callable = str,
    desc: str = "prep",
    max_failed_share: float = 1.0,
    check_hashes: bool = False,
    ignored: Sequence[Unread] = (),
    max_bytes: int = 0,
    memory_mb: int = 0,
) -> dict:
    """Write every unit of a split (inside a :func:`ray_session`) and finish the split.

    Returns the split's stats (also written to ``stats.json``). Outside a Ray session (a small
    prep) the units are written here, one after another: the same shards. Under Ray, a bounded
    number of tasks is in flight and a task whose worker dies or that fails on an OSError runs
    again (:func:`data_prep.tasks.run_tasks`). With ``max_bytes``, a unit's shard that reaches
    that size is closed and its output goes on in the unit's next part.
    """
    start = time.perf_counter()
    results = _reopened(split_dir, units, describe, check_hashes)
    # the units read again, one at a time as tasks are submitted: a plan's items wait on the
    # driver's disk (data_prep.listing), and a list of every unit still to write held them all
    todo = (u for u in units if u.index not in results)
    if results:
        log.info("%s: %d of %d shards already done, resuming", desc, len(results), len(units))
    # running totals for the bar: summing every result at each completion was quadratic
    samples = sum(r.samples for r in results.values())
    skipped = sum(sum(r.skipped.values()) for r in results.values())
    calls = ((u, str(split_dir), encode, describe, max_bytes) for u in todo)
    with tqdm(total=len(units), initial=len(results), desc=desc, unit="shard",
              dynamic_ncols=True) as bar:  # fmt: skip
        for result in run_tasks(write_shard, calls, memory_mb):
            results[result.unit] = result
            samples += result.samples
            skipped += sum(result.skipped.values())
            bar.set_postfix(samples=samples, skipped=skipped, refresh=False)  # drawn by update()
            bar.update(1)
    seconds = time.perf_counter() - start
    return finish_split(split_dir, results.values(), seconds, max_failed_share, ignored)


def _reopened(split_dir, units, describe, check_hashes: bool) -> dict[int, UnitResult]:
    """Ready ``split_dir`` for (re)writing: its older records adopted, ``_SUCCESS`` and the
    shards of another plan removed; returns the finished units' results by index."""
    split_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(split_dir, Path):  # a split in a store was never in the older layout
        adopt_legacy_records(split_dir)
    if (split_dir / SUCCESS).exists():
        (split_dir / SUCCESS).unlink()
    _remove_unplanned(split_dir, set(range(len(units))))
    results: dict[int, UnitResult] = {}
    recorded = {
        shard_unit(f.name.removesuffix(".json")) for f in (split_dir / WORK_DIR).glob("*.json")
    }
    for index in sorted(recorded - {None}):
        if index < len(units):  # only a recorded unit is read back: a unit's items are on disk
            done = unit_is_done(split_dir, units[index], describe, sha256=check_hashes)
            if done is not None:
                results[index] = done
    return results


def write_shard(
    unit: WorkUnit, split_dir: str, encode: Encoder, describe, max_bytes: int = 0
) -> UnitResult:
    """One unit's shards, in a Ray task or here (its name prefixes a worker's lines on the
    driver's console)."""
    return write_unit(unit, location(split_dir), encode, describe, max_bytes)


def _remove_unplanned(split_dir: Path, planned: set[int]) -> None:
    """Drop shards (and their records) left by an earlier plan with different unit counts."""
    for shard in split_dir.glob("shard-*.tar"):
        unit = shard_unit(shard.name)
        if unit is not None and unit not in planned:
            shard.unlink()
            record = split_dir / WORK_DIR / f"{shard_name(unit)}.json"
            if record.exists():
                record.unlink()
