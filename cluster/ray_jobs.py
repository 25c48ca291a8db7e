"""Talking to a Ray cluster's job server: submit an entrypoint with a runtime env, follow it.

Token authentication: the client sends the token Ray finds for it (``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) when ``RAY_AUTH_MODE=token``, which is set here
unless the user chose otherwise. The token is never put in the job's runtime env, where anyone
who can list jobs could read it; the cluster's own nodes already hold it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Never shipped in a working_dir: Ray caps it at 100 MiB, and none of these are code.
WORKING_DIR_EXCLUDES = [
    ".git/",
    ".venv/",
    "venv/",
    "runs/",
    "results/",
    "**/__pycache__/",
    "*.egg-info/",
    ".pytest_cache/",
    ".ruff_cache/",
]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class RayJobError(RuntimeError):
    """The job server could not be reached, refused the token, or rejected the job."""


@dataclass(frozen=True)
class RayJob:
    address: str
    submission_id: str


def _client(address: str):
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    from ray.job_submission import JobSubmissionClient

    # Ray lists every file its working_dir upload leaves out; that is noise here.
    logging.getLogger("ray").setLevel(logging.WARNING)

    return JobSubmissionClient(address)


def submit(
    address: str,
    entrypoint: str,
    working_dir: Path,
    excludes: list[str],
    env_vars: dict[str, str],
    metadata: dict[str, str],
) -> RayJob:
    """Submit ``entrypoint`` to the job server at ``address`` (``http://head:8265``)."""
    runtime_env = {
        "working_dir": str(working_dir),
        "excludes": excludes,
        "env_vars": env_vars,
    }
    try:
        sid = _client(address).submit_job(
            entrypoint=entrypoint, runtime_env=runtime_env, metadata=metadata
        )
    except Exception as err:  # the SDK raises bare RuntimeError/ConnectionError for all of it
        raise RayJobError(
            f"cannot submit to the Ray job server at {address}: {_first(err)}"
        ) from err
    return RayJob(address, sid)


def _first(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def status(job: RayJob) -> tuple[str, str]:
    """The job's state (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED) and Ray's message."""
    info = _client(job.address).get_job_info(job.submission_id)
    return str(info.status.value), info.message or ""


def wait(job: RayJob, poll_seconds: float = 2.0) -> str:
    """Block until the job ends; returns its final state. Logs each change of state."""
    last = None
    while True:
        state, message = status(job)
        if state != last:
            log.info("ray job %s: %s %s", job.submission_id, state, message)
            last = state
        if state in TERMINAL:
            return state
        time.sleep(poll_seconds)
