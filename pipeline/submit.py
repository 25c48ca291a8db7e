"""Submitting a run to a cluster.

* **Slurm**: one sbatch script per enabled stage, chained with ``afterok`` so a stage starts only
  when the one before it succeeded. Each job runs ``maskmill stage RUN.yaml STAGE`` on a frozen
  copy of the resolved config, so the same skip / resume rules hold as for ``maskmill run``; a
  requeued job resumes its stage. Training ranks start with ``srun`` (one per task), rendezvous
  from the allocation, not through the ``deepspeed`` launcher: that launcher reaches other nodes
  over ssh with a hostfile, which many clusters forbid, and it hides the ranks from Slurm's
  signals, accounting and cleanup.
* **Ray**: the stages that run on Ray (the demo corpus, when the YAML asks for one, and prep) go
  to a Ray cluster as one job through its job server, shipping this project's code as the job's
  working_dir. Ray never reruns a failed job itself; ``--retries N`` resubmits it, and since prep
  keeps every finished shard, a retry redoes only the shards that were in flight.

Every submission is recorded in ``RUN_DIR/.maskmill/submissions.json`` for ``maskmill status``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cluster import ray_jobs, slurm
from cluster.sbatch import JobSpec, render
from cluster.slurm import SlurmError
from cluster.slurm_config import TRAINING_STAGES
from data_prep.store import absolute
from pipeline.schema import RunConfig
from pipeline.stages import STAGES
from pipeline.state import STATE_DIR
from training.typed_config import to_yaml

log = logging.getLogger(__name__)

SUBMIT_DIR = "submit"  # RUN_DIR/submit: the frozen config and the job scripts
SUBMISSIONS = "submissions.json"
RAY_STAGES = ("demo_data", "prep")
SLURM_DONE = ("COMPLETED",)
SLURM_ENDED = (
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
    "DEADLINE",
)  # fmt: skip


@dataclass
class Submission:
    kind: str  # slurm | ray
    stages: list[str]
    jobs: list[str]  # Slurm job ids, or Ray submission ids (one per attempt)
    address: str = ""
    scripts: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    submitted: float = field(default_factory=time.time)


def _project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def submit_dir(cfg: RunConfig) -> Path:
    return Path(cfg.run_dir) / SUBMIT_DIR


# -- Slurm -------------------------------------------------------------------------------------


def slurm_jobs(cfg: RunConfig, workdir: Path, python: str) -> list[tuple[str, JobSpec]]:
    """One job per enabled stage, in order; pure (nothing is written or submitted)."""
    run_dir = workdir / cfg.run_dir
    run_yaml = run_dir / SUBMIT_DIR / "run.yaml"
    s = cfg.slurm
    jobs = []
    for stage in STAGES:
        if not stage.enabled(cfg):
            continue
        res = s.stage(stage.name)
        training = stage.name in TRAINING_STAGES
        kind = "training" if training else "ray" if stage.name == "prep" else "plain"
        jobs.append(
            (
                stage.name,
                JobSpec(
                    name=f"maskmill-{cfg.name}-{stage.name}",
                    kind=kind,
                    command=[python, "-m", "pipeline.cli", "stage", str(run_yaml), stage.name],
                    workdir=str(workdir),
                    log=str(run_dir / "logs" / "slurm" / f"{stage.name}-%j.out"),
                    nodes=cfg.launch.nodes if training else (res.nodes or 1),
                    tasks_per_node=cfg.launch.ranks if training else 1,
                    cpus_per_task=res.cpus_per_task,
                    gpus_per_node=res.gpus_per_node,
                    time=res.time,
                    mem=res.mem,
                    partition=res.partition or s.partition,
                    account=s.account,
                    qos=s.qos,
                    signal_seconds=s.signal_seconds,
                    setup=list(s.setup),
                    extra_sbatch=list(s.extra_sbatch),
                    python=python,
                    master_port=cfg.launch.master_port if training else None,
                ),
            )
        )
    return jobs


def frozen_for_slurm(cfg: RunConfig) -> RunConfig:
    """The config each job reads: training ranks start under ``srun``."""
    return dataclasses.replace(cfg, launch=dataclasses.replace(cfg.launch, launcher="srun"))


def render_slurm(cfg: RunConfig, python: str | None = None) -> list[tuple[str, str]]:
    """``(stage, script text)`` for every job, as ``--dry-run`` prints them."""
    py = python or cfg.slurm.python or sys.executable
    return [(name, render(spec)) for name, spec in slurm_jobs(cfg, Path.cwd(), py)]


def script_path(cfg: RunConfig, index: int, stage: str) -> Path:
    return submit_dir(cfg) / f"{index:02d}-{stage}.sbatch"


def job_needs(stages: list[str]) -> list[list[int]]:
    """For each job of ``stages`` (in order), the earlier jobs it waits for: those of the
    stages it reads (``Stage.needs``), through stages not submitted to what they needed."""
    by_name = {s.name: s for s in STAGES}
    index = {name: i for i, name in enumerate(stages)}

    def wanted(name: str) -> set[int]:
        found = set()
        for need in by_name[name].needs:
            found |= {index[need]} if need in index else wanted(need)
        return found

    return [sorted(wanted(name)) for name in stages]


def dry_run_commands(cfg: RunConfig, stages: list[str]) -> list[str]:
    """The shell lines that would submit the jobs: each job id kept in a variable (Slurm hands
    out the real ones) and named in the ``afterok`` of the jobs that need it."""
    variables = [f"JOB_{stage.upper()}" for stage in stages]
    lines = []
    for i, (stage, needs) in enumerate(zip(stages, job_needs(stages))):
        after = [f"${{{variables[j]}}}" for j in needs]
        argv = slurm.sbatch_command(script_path(cfg, i, stage), after)
        # A word naming a variable is double-quoted so the shell expands it.
        cmd = " ".join(f'"{a}"' if "${" in a else shlex.quote(a) for a in argv)
        lines.append(f"{variables[i]}=$({cmd})")
    return lines


def dry_run_summary(cfg: RunConfig, python: str | None = None) -> list[str]:
    """One row per job: what it asks Slurm for and what it waits for."""
    jobs = slurm_jobs(cfg, Path.cwd(), python or cfg.slurm.python or sys.executable)
    names = [name for name, _ in jobs]
    rows = [("job", "nodes x tasks", "GPUs/node", "CPUs/task", "time", "waits for")]
    for (name, spec), needs in zip(jobs, job_needs(names)):
        waits = ", ".join(names[j] for j in needs) or "-"
        rows.append((name, f"{spec.nodes} x {spec.tasks_per_node}", str(spec.gpus_per_node or 0),
                     str(spec.cpus_per_task), spec.time or "-", waits))  # fmt: skip
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]


def write_slurm_scripts(cfg: RunConfig, python: str | None = None) -> list[tuple[str, Path]]:
    """The frozen config and every job's script under ``RUN_DIR/submit``: ``(stage, path)``."""
    out = submit_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.yaml").write_text(to_yaml(frozen_for_slurm(cfg)))
    (Path(cfg.run_dir) / "logs" / "slurm").mkdir(parents=True, exist_ok=True)
    written = []
    for i, (name, text) in enumerate(render_slurm(cfg, python)):
        path = script_path(cfg, i, name)
        path.write_text(text)
        written.append((name, path))
    return written


def submit_slurm(cfg: RunConfig, python: str | None = None) -> Submission:
    """Write the frozen config and the scripts under ``RUN_DIR/submit`` and submit the jobs."""
    written = write_slurm_scripts(cfg, python)
    names, scripts = [n for n, _ in written], [p for _, p in written]
    ids = slurm.submit_graph(scripts, job_needs(names))
    sub = Submission(
        kind="slurm",
        stages=names,
        jobs=[str(i) for i in ids],
        scripts=[str(p) for p in scripts],
        logs=[
            str(Path(cfg.run_dir) / "logs" / "slurm" / f"{n}-{i}.out") for n, i in zip(names, ids)
        ],
    )
    record_submission(cfg, sub)
    for name, job_id in zip(names, ids):
        log.info("submitted %-9s as Slurm job %d", name, job_id)
    return sub


def wait_slurm(sub: Submission, poll_seconds: float = 5.0, timeout: float | None = None) -> bool:
    """Block until every job of a chain has ended; True if all completed."""
    ids = [int(j) for j in sub.jobs]
    last: dict[int, str] = {}
    deadline = None if timeout is None else time.monotonic() + timeout
    while deadline is None or time.monotonic() < deadline:
        states = slurm.job_states(ids)
        for job_id, st in states.items():
            if last.get(job_id) != st.state:
                log.info("slurm job %d: %s", job_id, st.state)
                last[job_id] = st.state
        if len(states) == len(ids) and all(st.state in SLURM_ENDED for st in states.values()):
            return all(st.state in SLURM_DONE for st in states.values())
        stuck = slurm.stuck_jobs(ids)
        if stuck:
            job_id, reason = next(iter(stuck.items()))
            stage = dict(zip(ids, sub.stages)).get(job_id, "?")
            raise SlurmError(
                f"Slurm job {job_id} ({stage}) can never start: {reason}, it asks for more than "
                f"its partition gives (see `sinfo`); lower slurm.{stage}'s cpus_per_task, mem, "
                f"time or nodes, or name another slurm.{stage}.partition, then submit again "
                f"(`scancel {' '.join(map(str, ids))}` first)"
            )
        time.sleep(poll_seconds)
    raise TimeoutError(f"slurm jobs {sub.jobs} still running after {timeout:.0f}s")


# -- Ray -----------------------------------------------------------------------------------------


def frozen_for_ray(cfg: RunConfig) -> RunConfig:
    """The config the Ray job reads: paths made absolute (the job's working directory is a copy
    of the code somewhere on the cluster), and prep joins the cluster it runs in."""
    # a store URL (prep.source of a text corpus, prep.out) stays as it is
    demo = cfg.demo_data and dataclasses.replace(cfg.demo_data, out=absolute(cfg.demo_data.out))
    prep = dataclasses.replace(
        cfg.prep, source=absolute(cfg.prep.source), out=absolute(cfg.prep.out), ray_address="auto"
    )
    return dataclasses.replace(cfg, run_dir=absolute(cfg.run_dir), demo_data=demo, prep=prep)


def ray_stages(cfg: RunConfig) -> list[str]:
    return [s.name for s in STAGES if s.name in RAY_STAGES and s.enabled(cfg)]


def ray_entrypoint(cfg: RunConfig, python: str = "python") -> str:
    run_yaml = Path(frozen_for_ray(cfg).run_dir) / SUBMIT_DIR / "ray-run.yaml"
    stages = ",".join(ray_stages(cfg))
    return shlex.join([python, "-m", "pipeline.cli", "stage", str(run_yaml), stages])


def submit_ray(
    cfg: RunConfig, address: str, python: str = "python", retries: int = 0, wait: bool = False
) -> tuple[Submission, str]:
    """Submit the Ray stages as one job; with ``wait`` (or ``retries``) follow it to the end,
    resubmitting a failed job up to ``retries`` times. Returns the record and the last state."""
    frozen = frozen_for_ray(cfg)
    out = Path(frozen.run_dir) / SUBMIT_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / "ray-run.yaml").write_text(to_yaml(frozen))
    excludes = list(ray_jobs.WORKING_DIR_EXCLUDES)
    root = _project_root()
    run_dir = Path(frozen.run_dir)
    if run_dir.is_relative_to(root):
        excludes.append(f"/{run_dir.relative_to(root)}/")
    entrypoint = ray_entrypoint(cfg, python)
    sub = Submission(kind="ray", stages=ray_stages(cfg), jobs=[], address=address)
    state = "PENDING"
    for attempt in range(retries + 1):
        job = ray_jobs.submit(
            address,
            entrypoint,
            working_dir=root,
            excludes=excludes,
            env_vars={"PYTHONUNBUFFERED": "1"},
            metadata={"maskmill_run": cfg.name, "attempt": str(attempt)},
        )
        sub.jobs.append(job.submission_id)
        record_submission(cfg, sub)
        log.info("submitted %s to %s as Ray job %s", entrypoint, address, job.submission_id)
        if not (wait or retries):
            return sub, state
        state = ray_jobs.wait(job)
        if state != "FAILED" or attempt == retries:
            break
        log.warning(
            "ray job %s failed; resubmitting (%d of %d)", job.submission_id, attempt + 1, retries
        )
    return sub, state


# -- records -----------------------------------------------------------------------------------


def record_submission(cfg: RunConfig, sub: Submission) -> None:
    """Add ``sub`` to the run's submissions (replacing an earlier record of the same one)."""
    path = Path(cfg.run_dir) / STATE_DIR / SUBMISSIONS
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [r for r in read_submissions(cfg) if r.submitted != sub.submitted]
    records.append(sub)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([dataclasses.asdict(r) for r in records], indent=2))
    tmp.replace(path)


def read_submissions(cfg: RunConfig) -> list[Submission]:
    path = Path(cfg.run_dir) / STATE_DIR / SUBMISSIONS
    if not path.exists():
        return []
    return [Submission(**r) for r in json.loads(path.read_text())]


def describe_submission(sub: Submission) -> list[str]:
    """Lines for ``maskmill status``: each job's state from the scheduler, and its log."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(sub.submitted))
    if sub.kind == "slurm":
        states = slurm.job_states([int(j) for j in sub.jobs])
        lines = [f"slurm submission of {when}:"]
        for name, job_id, log_path in zip(sub.stages, sub.jobs, sub.logs):
            st = states.get(int(job_id))
            label = f"{st.state} {st.exit_code}".strip() if st else "unknown to slurm"
            lines.append(f"  {name:<10} job {job_id:<8} {label:<22} log: {log_path}")
        return lines
    job = ray_jobs.RayJob(sub.address, sub.jobs[-1])
    try:
        state, message = ray_jobs.status(job)
    except Exception as err:
        state, message = "unreachable", str(err).splitlines()[0]
    return [
        f"ray submission of {when} to {sub.address} ({', '.join(sub.stages)}), "
        f"attempt {len(sub.jobs)}:",
        f"  job {job.submission_id}: {state} {message}".rstrip(),
        f"  logs: ray job logs --address {sub.address} {job.submission_id}",
        f"        (on the head node: <ray temp dir>/session_latest/logs/job-driver-{job.submission_id}.log)",
    ]
