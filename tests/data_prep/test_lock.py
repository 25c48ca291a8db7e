"""The run and prep locks hold where flock works and where the file system refuses it (Lustre
without flock answers ENOSYS): a second holder is refused naming the first, a dead holder's lock
is taken over."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import socket
import time

import pytest

from data_prep import lock
from data_prep.lock import LockHeld, exclusive


def _refuse_flock(monkeypatch):
    def refused(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(lock.fcntl, "flock", refused)


@pytest.fixture(params=["flock", "no_flock"])
def flock_mode(request, monkeypatch):
    if request.param == "no_flock":
        _refuse_flock(monkeypatch)
    return request.param


@pytest.fixture
def no_flock(monkeypatch):
    _refuse_flock(monkeypatch)


def _hold(path, ready, release):
    with exclusive(path):
        ready.set()
        release.wait(60)


def test_a_second_holder_is_refused_naming_the_first(tmp_path, flock_mode):
    path = tmp_path / "lock"
    ctx = multiprocessing.get_context("fork")  # the child sees the patched flock
    ready, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold, args=(path, ready, release))
    child.start()
    try:
        assert ready.wait(30)
        busy = pytest.raises(LockHeld, match=f"pid {child.pid} on {socket.gethostname()}")
        with busy, exclusive(path):
            pass
    finally:
        release.set()
        child.join(30)
    with exclusive(path):  # released with its holder
        pass


def test_without_flock_a_dead_holders_lock_file_is_taken_over(tmp_path, no_flock):
    held = tmp_path / "lock.held"
    dead = multiprocessing.get_context("fork").Process(target=lambda: None)
    dead.start()
    dead.join()
    held.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "since": 1}))
    with exclusive(tmp_path / "lock"):
        assert json.loads(held.read_text())["pid"] == os.getpid()
    assert not held.exists()


def test_without_flock_another_hosts_lock_counts_until_it_misses_its_beats(tmp_path, no_flock):
    held = tmp_path / "lock.held"
    held.write_text(json.dumps({"host": "node7", "pid": 1, "since": int(time.time())}))
    with pytest.raises(LockHeld, match="pid 1 on node7"), exclusive(tmp_path / "lock"):
        pass
    old = time.time() - lock.STALE_S - 1
    os.utime(held, (old, old))
    with exclusive(tmp_path / "lock"):
        pass


def test_the_maskmill_run_lock_works_where_flock_is_refused(tmp_path, flock_mode):
    from pipeline.runner import RunLockedError, _run_lock

    busy = pytest.raises(RunLockedError, match="another `maskmill run`")
    with _run_lock(tmp_path), busy, _run_lock(tmp_path):
        pass
    with _run_lock(tmp_path):
        pass
