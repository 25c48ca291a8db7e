"""The local Ray head: loopback only, and nothing of it outlives a killed prep."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from data_prep.ray_job import ray_session
from data_prep.ray_reaper import reap_stale_sessions, records_dir, session_processes

LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")


def test_the_local_head_listens_on_loopback_only():
    """Before: GCS, raylet and agents listened on every interface (token auth on, still)."""
    import ray

    with ray_session(1, None):
        ray.get(ray.remote(lambda: 1).remote())  # a worker up too
        mine = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
        listening = [
            c.laddr.ip
            for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in mine
        ]
    assert len(listening) >= 3  # GCS, raylet, agents
    assert set(listening) <= set(LOOPBACK), listening


def _killed_prep(demo_corpus, tmp_path):
    """A prep started as a user would, killed (SIGKILL, the driver alone) while Ray works;
    returns the session's record and the driver's process."""
    cmd = [sys.executable, "-m", "pipeline.cli", "prep", "image", str(demo_corpus),
           str(tmp_path / "out"), "samples_per_shard=2", "num_cpus=2"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record_path = records_dir() / f"{proc.pid}.json"
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "out").glob("*/shard-*.tar")):
        assert proc.poll() is None, "the prep ended before it could be killed"
        time.sleep(0.1)
    record = json.loads(record_path.read_text())
    assert session_processes(record["session_dir"])  # Ray at work
    return record, record_path, proc


def test_a_killed_prep_leaves_no_ray_process(demo_corpus, tmp_path):
    """Before: Ray's dashboard and runtime-env agents and idle workers outlived the driver."""
    record, record_path, proc = _killed_prep(demo_corpus, tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 60
    while (session_processes(record["session_dir"]) or record_path.exists()) and (
        time.time() < deadline
    ):
        time.sleep(0.5)
    assert session_processes(record["session_dir"]) == []
    assert not record_path.exists()


@pytest.mark.slow  # the guardian's own fallback; the guardian is tested in the default run
def test_the_next_prep_reaps_a_session_whose_guardian_died_too(demo_corpus, tmp_path):
    record, record_path, proc = _killed_prep(demo_corpus, tmp_path)
    guardian = next(
        p for p in psutil.process_iter(["cmdline"])
        if str(record_path) in " ".join(p.info["cmdline"] or ())
    )  # fmt: skip
    guardian.send_signal(signal.SIGKILL)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(2)
    left = session_processes(record["session_dir"])
    if not left:
        pytest.skip("Ray ended every process by itself this time: nothing for a later run to do")
    assert reap_stale_sessions() >= len(left)
    assert session_processes(record["session_dir"]) == [] and not record_path.exists()
