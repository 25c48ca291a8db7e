"""Walking a run's stages: skip what is finished and unchanged, resume what failed, redo what
changed.

* done + same fingerprint -> skipped;
* failed or killed (state still ``running``) + same fingerprint -> run again in place; the stage
  itself resumes (prep keeps finished shards, pretraining loads its newest checkpoint);
* different fingerprint (config or inputs changed) -> the stage's output is removed first, then
  the stage runs from scratch, and every later stage follows, since its inputs change.

Outputs are removed only from directories that carry the marker written when maskmill created
them, so a path pointed at the user's own data is never deleted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from data_prep.lock import LockHeld, exclusive, process_alive
from data_prep.shard_format import atomic_write_text
from data_prep.store import remove_tree
from pipeline.schema import RunConfig
from pipeline.stages import STAGES, Stage
from pipeline.state import (
    DONE,
    FAILED,
    OUTPUT_MARKER,
    PENDING,
    RUNNING,
    STATE_DIR,
    StageState,
    fingerprint,
    read_state,
    write_state,
)
from training.modalities import modality
from training.typed_config import to_yaml

log = logging.getLogger(__name__)


class RunLockedError(RuntimeError):
    pass


@dataclass(frozen=True)
class StageView:
    """What ``maskmill status`` shows for one stage."""

    name: str
    describe: str
    state: StageState
    current_fingerprint: str | None  # None: inputs not there yet
    enabled: bool
    stale_upstream: str | None = None  # an earlier stage that will run again
    damage: str | None = None  # what is wrong with a done stage's output now

    @property
    def label(self) -> str:
        if not self.enabled:
            return "disabled"
        s = self.state
        if s.status == DONE and self.current_fingerprint not in (None, s.fingerprint):
            return "stale (config or inputs changed)"
        if s.status == DONE and self.stale_upstream:
            return f"stale ({self.stale_upstream} will run again)"
        if s.status == DONE and self.damage:
            return "damaged (rerun repairs it)"
        if s.status == RUNNING and s.pid and not process_alive(s.pid):
            return "interrupted (will resume)"
        return s.status


def stage_fingerprint(stage: Stage, cfg: RunConfig) -> str:
    return fingerprint(stage.name, to_yaml(stage.section(cfg)), stage.inputs(cfg))


def recorded_state(
    stage: Stage, cfg: RunConfig, run_dir: Path, current: str | None, adopt: bool = False
) -> StageState:
    """The stage's recorded state; a stage that an older maskmill finished with today's config
    (the modality's ``older_sections``: image runs of 0.1) or today's inputs read the old way
    (the stage's ``older_inputs``: prep's stat of every source file) counts as done under
    today's fingerprint, and with ``adopt`` is recorded so."""
    state = read_state(run_dir, stage.name)
    if state.status != DONE or current in (None, state.fingerprint):
        return state
    inputs = stage.inputs(cfg)
    v1 = {
        fingerprint(stage.name, text, inputs)
        for text in modality(cfg.modality).older_sections(stage.name, stage.section(cfg))
    }
    if state.fingerprint not in v1 and stage.older_inputs is not None:
        section = to_yaml(stage.section(cfg))
        v1.add(fingerprint(stage.name, section, stage.older_inputs(cfg)))
    if state.fingerprint in v1:
        state.fingerprint = current
        if adopt:
            log.info("%-9s finished by an older maskmill with this config; kept", stage.name)
            write_state(run_dir, stage.name, state)
    return state


def run_pipeline(cfg: RunConfig, force: tuple[str, ...] = (), only: tuple[str, ...] = ()) -> None:
    """Run every enabled stage in order (see module docstring), or just those in ``only``
    (what each Slurm or Ray job of a submitted run does)."""
    run_dir = Path(cfg.run_dir)
    selected = [s for s in STAGES if s.enabled(cfg) and (not only or s.name in only)]
    for stage in selected:  # before any work: a stage that cannot run here fails the run now
        if stage.name in force or read_state(run_dir, stage.name).status != DONE:
            _check_output(stage, stage.output(cfg))
            stage.preflight(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _run_lock(run_dir, tuple(s.name for s in selected) if only else ()):
        if not only:  # the settings of the run now working; run.yaml once it has finished
            atomic_write_text(run_dir / STATE_DIR / "run-attempt.yaml", to_yaml(cfg))
        for stage in selected:
            _run_stage(stage, cfg, run_dir, force=stage.name in force)
        if not only:
            atomic_write_text(run_dir / "run.yaml", to_yaml(cfg))


def stage_views(cfg: RunConfig) -> list[StageView]:
    """Every stage's view; a done stage after one that will run again is stale too: its inputs
    are that stage's outputs."""
    views: list[StageView] = []
    upstream = None
    for stage in STAGES:
        try:
            current = stage_fingerprint(stage, cfg) if stage.enabled(cfg) else None
        except (FileNotFoundError, OSError):
            current = None
        state = recorded_state(stage, cfg, Path(cfg.run_dir), current)
        damage = _damage(stage, cfg) if state.status == DONE and stage.enabled(cfg) else None
        views.append(
            StageView(
                stage.name,
                stage.describe,
                state,
                current,
                stage.enabled(cfg),
                upstream,
                damage,
            )
        )
        if upstream is None and views[-1].enabled and views[-1].label != DONE:
            upstream = stage.name
    return views


def _run_stage(stage: Stage, cfg: RunConfig, run_dir: Path, force: bool) -> None:
    fp = stage_fingerprint(stage, cfg)
    previous = recorded_state(stage, cfg, run_dir, fp, adopt=True)
    same = previous.fingerprint == fp
    damage = _damage(stage, cfg) if previous.status == DONE and same else None
    if previous.status == DONE and same and not force and not damage:
        log.info("%-9s up to date, skipped", stage.name)
        return
    changed = previous.status != PENDING and not same
    if changed or (force and not stage.redo_in_place):
        _clear_output(stage.output(cfg))
    elif damage:
        log.warning("%-9s output damaged (%s): repairing it", stage.name, damage)
    elif force:
        log.info("%-9s forced: checking its output and redoing what is wrong", stage.name)
    elif previous.status in (RUNNING, FAILED):
        log.info("%-9s resuming after an interrupted or failed attempt", stage.name)
    _claim_output(stage, stage.output(cfg))
    log.info("%-9s %s", stage.name, stage.describe)
    state = StageState(status=RUNNING, fingerprint=fp, started=time.time(), pid=os.getpid())
    write_state(run_dir, stage.name, state)
    try:
        if force and stage.redo_in_place:  # checked whole: the hashes too (prep)
            stage.execute(cfg, check_hashes=True)
        else:
            stage.execute(cfg)
    except BaseException as err:
        state.status, state.finished, state.error = (
            FAILED,
            time.time(),
            f"{type(err).__name__}: {err}",
        )
        write_state(run_dir, stage.name, state)
        raise
    state.status, state.finished = DONE, time.time()
    write_state(run_dir, stage.name, state)
    log.info("%-9s done in %.1fs", stage.name, state.seconds)


def _damage(stage: Stage, cfg: RunConfig) -> str | None:
    try:
        return stage.damage(cfg)
    except (OSError, ValueError) as err:  # records unreadable: damaged too
        return f"{type(err).__name__}: {err}"


class ForeignOutputError(RuntimeError):
    """A stage's output folder holds files maskmill did not write."""


def _check_output(stage: Stage, path: Path) -> None:
    """Refuse a non-empty output folder we did not make (before any stage runs)."""
    if path.is_dir() and any(path.iterdir()) and not (path / OUTPUT_MARKER).exists():
        raise ForeignOutputError(
            f"{stage.name}: its output {path} already holds files that maskmill did not write; "
            "point it elsewhere or empty it (maskmill never deletes data it did not create)"
        )


def _claim_output(stage: Stage, path: Path) -> None:
    """Mark ``path`` as made by maskmill."""
    _check_output(stage, path)
    path.mkdir(parents=True, exist_ok=True)
    (path / OUTPUT_MARKER).write_text(
        "written by maskmill; removed and rewritten when its stage reruns\n"
    )


def _clear_output(path: Path) -> None:
    if (path / OUTPUT_MARKER).exists():
        log.info("removing %s (its stage reruns from scratch)", path)
        remove_tree(path)


@contextmanager
def _run_lock(run_dir: Path, stages: tuple[str, ...] = ()) -> Iterator[None]:
    """The whole run's lock, or with ``stages`` (a submitted job's) one lock per stage: the
    fine-tune and probe jobs of a submitted run work at once, each on its own stage's state and
    output; a whole run holds every stage's too."""
    names = stages or tuple(s.name for s in STAGES)
    with contextlib.ExitStack() as held:
        try:
            if not stages:
                held.enter_context(exclusive(run_dir / STATE_DIR / "lock"))
            for name in names:
                held.enter_context(exclusive(run_dir / STATE_DIR / f"lock-{name}"))
        except LockHeld as err:
            raise RunLockedError(
                f"another `maskmill run` ({err}) is working in {run_dir}"
            ) from None
        yield

    return True
