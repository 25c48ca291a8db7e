"""A killed prep leaves no Ray process behind: its local head ends with it, or with the next prep.

The processes of a local head (GCS, raylet, log monitor, the dashboard and runtime-env agents,
workers) are the driver's descendants; a driver killed with SIGKILL cannot stop them, and the
agents and idle workers outlive it (measured: two agents and two workers adopted by init).
Each local session is recorded in ``<tmp>/maskmill-ray-<uid>/<driver pid>.json`` (the driver's
pid and start time, the session folder) and watched by a small guardian process in its own
session: when the driver is gone, the guardian ends every process of that Ray session and drops
the record. A session whose guardian died too is reaped by the next prep on the machine
(:func:`reap_stale_sessions`). A process belongs to a session when its command line or an open
file names the session folder (the agents rename themselves, but keep their logs open there).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

log = logging.getLogger(__name__)


def records_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"maskmill-ray-{os.getuid()}"


def session_processes(session_dir: str) -> list[psutil.Process]:
    """This user's processes that belong to the Ray session in ``session_dir``."""
    found, me = [], os.getpid()
    for proc in psutil.process_iter(["pid", "uids", "cmdline"]):
        try:
            if proc.pid == me or proc.info["uids"].real != os.getuid():
                continue
            if any(session_dir in arg for arg in proc.info["cmdline"] or ()) or any(
                f.path.startswith(session_dir) for f in proc.open_files()
            ):
                found.append(proc)
        except (psutil.Error, AttributeError):
            continue
    return found


def end_session(session_dir: str, rounds: int = 5) -> int:
    """SIGKILL every process of the session (a few rounds: some start others as they go);
    returns how many were ended."""
    ended = 0
    for _ in range(rounds):
        procs = session_processes(session_dir)
        if not procs:
            break
        for proc in procs:
            try:
                proc.send_signal(signal.SIGKILL)
                ended += 1
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=2)
    return ended


def _driver_alive(record: dict) -> bool:
    try:
        return psutil.Process(record["pid"]).create_time() == record["started"]
    except psutil.Error:
        return False


def reap_stale_sessions() -> int:
    """End the processes of recorded sessions whose driver is gone; returns how many."""
    ended = 0
    for path in sorted(records_dir().glob("*.json")) if records_dir().is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _driver_alive(record):
            continue
        count = end_session(record["session_dir"])
        if count:
            log.warning(
                "ended %d Ray processes left by a killed prep (pid %d)", count, record["pid"]
            )
        ended += count
        path.unlink(missing_ok=True)
    return ended


class SessionGuard:
    """Record this driver's local Ray session and start its guardian; :meth:`close` after a
    clean ``ray.shutdown()``."""

    def __init__(self, session_dir: str):
        records_dir().mkdir(mode=0o700, exist_ok=True)
        me = psutil.Process()
        self.record = records_dir() / f"{me.pid}.json"
        data = {"pid": me.pid, "started": me.create_time(), "session_dir": session_dir}
        self.record.write_text(json.dumps(data))
        self.guardian = subprocess.Popen(
            [sys.executable, "-m", "data_prep.ray_reaper", str(self.record)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a signal to the prep's process group spares it
        )

    def close(self) -> None:
        self.guardian.kill()
        self.guardian.wait()
        self.record.unlink(missing_ok=True)


def guard(record_path: Path, poll_s: float = 0.5) -> None:
    """The guardian: wait for the driver to go, then end its session."""
    record = json.loads(record_path.read_text())
    while _driver_alive(record):
        time.sleep(poll_s)
    if record_path.exists():  # not closed cleanly: the driver died
        end_session(record["session_dir"])
        record_path.unlink(missing_ok=True)


if __name__ == "__main__":
    guard(Path(sys.argv[1]))
