"""Stall detection: a rank that stops making progress ends the job within ``stall_timeout_s``.

Each rank writes a heartbeat (its step, the time, host and pid) to ``OUT_DIR/heartbeat/rank-N``
as it trains, and a thread on each rank watches the next rank's file, round the ring, so the
work grows with the ranks and not with their square. A peer whose heartbeat has not changed
for ``stall_timeout_s``, timed by the watcher's own clock (no agreement between nodes' clocks is
needed), has stalled: a wedged GPU, a stalled NFS read and a SIGSTOP look alike from outside.
The watcher logs the rank, its host and last step, SIGKILLs it when it runs on the same node,
and ends its own rank with :data:`STALLED_EXIT`; the launcher (DeepSpeed's, or ``srun --kill-on-bad-exit``) then ends the
others, the stopped one by SIGKILL after its grace period. Without this the job waits in a
collective until its timeout (measured: 634 s with one rank stopped) and says nothing of why.
The last complete checkpoint is kept, so a rerun resumes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

HEARTBEAT_DIR = "heartbeat"
STALLED_EXIT = 4


class Watchdog:
    """This rank's heartbeat and its watch over the next rank (see module docstring)."""

    def __init__(self, out_dir: Path, rank: int, world_size: int, timeout_s: float):
        self.dir = Path(out_dir) / HEARTBEAT_DIR
        self.rank, self.world_size, self.timeout_s = rank, world_size, timeout_s
        self.on = timeout_s > 0 and world_size > 1  # one rank: nobody to watch or be watched
        self.every_s = min(10.0, timeout_s / 8)
        self.last_beat = 0.0
        self.stop = threading.Event()
        self.thread = None
        if self.on:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.beat(-1, force=True)
            self.thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)
            self.thread.start()

    def beat(self, step: int, force: bool = False) -> None:
        """Record progress at ``step`` (written at most every ``every_s`` unless forced)."""
        now = time.monotonic()
        if not self.on or (not force and now - self.last_beat < self.every_s):
            return
        self.last_beat = now
        path = self.dir / f"rank-{self.rank}"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(f"{step} {time.time():.3f} {socket.gethostname()} {os.getpid()}\n")
        os.replace(tmp, path)

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=5)

    def _watch(self) -> None:
        peer = (self.rank + 1) % self.world_size
        path = self.dir / f"rank-{peer}"
        seen, since = None, time.monotonic()
        while not self.stop.wait(min(self.timeout_s / 4, 30.0)):
            try:
                current = path.read_text()
            except OSError:
                current = None
            now = time.monotonic()
            if current != seen:
                seen, since = current, now
            elif now - since > self.timeout_s:
                self._end(peer, seen, now - since)

    def _end(self, peer: int, heartbeat: str | None, silent_s: float) -> None:
        step, _, host, pid = (heartbeat or "-1 0 ? ?").split()[:4]
        where = f"after step {step}" if int(step) >= 0 else "before its first step"
        log.error(
            "rank %d (pid %s on %s) made no progress for %.0f s, %s: stopped, hung in a "
            "collective or I/O, or slower than pretrain.stall_timeout_s=%g allows. Ending the "
            "job; the last complete checkpoint is kept and a rerun resumes from it",
            peer, pid, host, silent_s, where, self.timeout_s,
        )  # fmt: skip
        if host == socket.gethostname() and pid.isdigit():
            # A stopped process ignores the launcher's SIGTERM until its grace runs out (30 s
            # for DeepSpeed's); on this node the stalled rank is ended now, freeing its device.
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        os._exit(STALLED_EXIT)
