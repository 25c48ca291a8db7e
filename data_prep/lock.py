"""One process at a time in a folder, across processes and hosts: the run lock of ``maskmill run``
and the lock of a prep's output folder.

``flock`` first: the kernel drops it when the holder dies, whatever kills it. Some shared file
systems refuse it (Lustre mounted without ``flock``, some NFS setups answer ENOSYS or ENOLCK):
there the lock is a file created with ``O_EXCL`` holding the holder's host, pid and start time,
its modification time refreshed every :data:`BEAT_S` seconds while held. A lock file counts as
stale, and is taken over, when its holder is a dead process on this host, or when it has not
been refreshed for :data:`STALE_S` seconds (a holder on another host that died, or lost its
node). Either way the lock file's text names the holder, for the refusal.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

BEAT_S = 30.0
STALE_S = 300.0  # ten missed beats
# flock's answers on a file system that does not do it (not "someone holds it")
NO_FLOCK = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL}


class LockHeld(RuntimeError):
    """Another process holds the lock; the message names it (host, pid, since when)."""


def holder_text() -> str:
    return json.dumps(
        {"host": socket.gethostname(), "pid": os.getpid(), "since": round(time.time())}
    )


def describe(text: str) -> str:
    try:
        h = json.loads(text)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["since"]))
        return f"pid {h['pid']} on {h['host']} since {since}"
    except (ValueError, KeyError, TypeError):
        return text.strip() or "another process"


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold ``path`` (a lock file) for the block, or raise :class:`LockHeld`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            refused = False
        except BlockingIOError:
            lock.seek(0)
            raise LockHeld(describe(lock.read())) from None
        except OSError as err:
            if err.errno not in NO_FLOCK:
                raise
            refused = True
        if not refused:
            lock.seek(0)
            lock.truncate()
            lock.write(holder_text() + "\n")
            lock.flush()
            yield
            return
    with held_file(path.with_name(path.name + ".held")):
        yield


@contextlib.contextmanager
def held_file(path: Path) -> Iterator[None]:
    """The ``O_EXCL`` lock file (see the module docstring)."""
    _create(path)
    stop = threading.Event()
    beat = threading.Thread(target=_beat, args=(path, stop), daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        path.unlink(missing_ok=True)


def _create(path: Path) -> None:
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            text = _read(path)
            if not is_stale(path, text) or not _take_over(path, text):
                raise LockHeld(describe(text)) from None
            continue
        with os.fdopen(fd, "w") as f:
            f.write(holder_text() + "\n")
        return
    raise LockHeld(describe(_read(path)))


def is_stale(path: Path, text: str) -> bool:
    """Its holder is a dead process of this host, or it missed :data:`STALE_S` of beats."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    try:
        h = json.loads(text)
        if h["host"] == socket.gethostname() and not process_alive(int(h["pid"])):
            return True
    except (ValueError, KeyError, TypeError):
        pass
    return age > STALE_S


def _take_over(path: Path, seen: str) -> bool:
    """Move the stale file aside; put it back if it is not the one judged stale (another
    process took it over in between)."""
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True
    if _read(aside) != seen:
        with contextlib.suppress(OSError):
            os.rename(aside, path)
        return False
    aside.unlink(missing_ok=True)
    return True


def _beat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(BEAT_S):
        with contextlib.suppress(OSError):
            os.utime(path)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
