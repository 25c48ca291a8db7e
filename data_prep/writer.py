"""Writing one work unit to one shard, atomically and reproducibly, and finishing a split.

A unit is done when its completion record ``.maskmill/work/shard-NNNNNN.json`` exists and the
files agree with it: the tar is renamed into place before that record is written, so a record
always points at a whole shard, and a rerun checks the shard's size and sha256 and the unit's
inputs against the record before keeping it, so a shard damaged or deleted after prep, or a unit
planned over other inputs, is written again. Tar headers carry fixed owners and times, so the
same inputs give byte-identical shards and a rerun reproduces the same sha256 in the manifest.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data_prep.plan import WorkUnit
from data_prep.shard_format import (
    META_DIR,
    STATS,
    SUCCESS,
    WORK_DIR,
    ShardRecord,
    atomic_write_text,
    file_sha256,
    index_path,
    shard_name,
    shard_problem,
    write_manifest,
    write_shard_index,
)
from data_prep.store import location, publish
from data_prep.unread import Unread

log = logging.getLogger(__name__)


class EmptySplitError(ValueError):
    """Every input of a split was skipped: the prep fails naming why, and writes no ``_SUCCESS``."""


class SkipSample(Exception):
    """What an encoder gives for input that cannot become a sample; ``reason`` is counted.

    Yielded, it skips one would-be sample and the encoder goes on (a segment too short); raised,
    it ends the input (a file that does not decode) and keeps the samples yielded before it."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Converted:
    """What an encoder yields when it repaired or converted an input on the way (resampled it,
    mixed stereo down, cut fixed windows for missing voice activity): the sample is kept, and
    ``reason`` is counted under ``converted`` in ``stats.json``."""

    def __init__(self, reason: str):
        self.reason = reason


@dataclass(frozen=True)
class Sample:
    """One WebDataset sample: a dot-free key and its members by extension."""

    key: str
    members: dict[str, bytes]

    def __post_init__(self) -> None:
        if "." in self.key or "/" in self.key or not self.key:
            raise ValueError(f"invalid sample key {self.key!r}: keys must be non-empty, no dots")


@dataclass
class UnitResult:
    record: ShardRecord
    inputs: int
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    converted: dict[str, int] = field(default_factory=dict)
    # inputs an unexpected error stopped: {"input": its name, "error": the error's one line}
    failures: list[dict] = field(default_factory=list)


class FailedInputsError(RuntimeError):
    """More of a split's inputs failed than ``max_failed_share`` allows; ``str`` says how many
    and where they are listed."""


FAILED = "failed"  # the skip reason of an input an unexpected error stopped
# Skips named one by one per shard and reason; the rest are counted in one line (a corpus with
# 10^5 bad records printed 10^5 warnings).
WARNINGS_PER_REASON = 3
FAILURES = f"{META_DIR}/failures.jsonl"  # one line per failed input: its name and the error
IGNORED = f"{META_DIR}/ignored.jsonl"  # one line per source file no split read: path, reason


Encoder = Callable[[Any], Iterable["Sample | SkipSample | Converted"]]  # one input -> 0..n samples


def inputs_digest(unit: WorkUnit, describe=str) -> str:
    """What a unit was planned over: its inputs' names in order, hashed."""
    return hashlib.sha256("\n".join(map(describe, unit.items)).encode()).hexdigest()


def unit_is_done(
    split_dir: Path, unit: WorkUnit, describe=str, sha256: bool = False
) -> UnitResult | None:
    """The stored result of a finished unit, or None when it must be (re)written: no record,
    a record of other inputs, or a shard missing or resized since. The size, not the sha256:
    hashing every finished shard again on the driver took ~40 min to resume LibriLight;
    ``maskmill verify`` checks the sha256 written with each shard, and so does a forced prep
    (``sha256``)."""
    split_dir = location(split_dir)
    done = split_dir / WORK_DIR / f"{shard_name(unit.index)}.json"
    if not done.exists():
        return None
    data = json.loads(done.read_text())
    record = ShardRecord(**data["record"])
    if data.get("inputs_digest", inputs_digest(unit, describe)) != inputs_digest(unit, describe):
        return None
    problem = shard_problem(split_dir / record.file, record, sha256=sha256)
    if problem:
        log.warning("%s: %s; writing it again", record.file, problem)
        return None
    return UnitResult(
        record, data["inputs"], data["skipped"], data["seconds"], data.get("converted", {}),
        data.get("failures", []),
    )  # fmt: skip


def write_unit(unit: WorkUnit, split_dir: Path, encode: Encoder, describe=str) -> UnitResult:
    """Encode every item of ``unit`` into shard ``unit.index``; bad items are skipped, counted.
    Into a store (``split_dir`` a URL's path): written in a local staging folder, then
    published: the shard, its sample index, and last its completion record."""
    if isinstance(split_dir, Path):
        return _write_unit_here(unit, split_dir, encode, describe)
    with tempfile.TemporaryDirectory(prefix="maskmill-stage-") as stage:
        result = _write_unit_here(unit, Path(stage), encode, describe)
        record = result.record
        index = index_path(Path(stage), record).relative_to(stage).as_posix()
        publish(Path(stage), split_dir, [record.file, index, f"{WORK_DIR}/{record.file}.json"])
    return result


def _write_unit_here(unit: WorkUnit, split_dir: Path, encode: Encoder, describe) -> UnitResult:
    start = time.perf_counter()
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / WORK_DIR).mkdir(parents=True, exist_ok=True)
    skipped: Counter[str] = Counter()
    converted: Counter[str] = Counter()
    failures: list[dict] = []
    final = split_dir / shard_name(unit.index)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    written = 0
    try:
        with open(tmp, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for item in unit.items:
                    added, failure = _add_item(tar, item, encode, describe, skipped, converted)
                    written += added
                    if failure:
                        failures.append({"input": describe(item), "error": failure})
            raw.flush()
            os.fsync(raw.fileno())
        digest = file_sha256(tmp)
        size = tmp.stat().st_size
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    unsaid = {r: n - WARNINGS_PER_REASON for r, n in skipped.items() if n > WARNINGS_PER_REASON}
    if unsaid:  # the first few of each reason were named; the rest are counted
        log.warning(
            "%s: %d more skipped, not named (%s); every count is in stats.json",
            final.name, sum(unsaid.values()), ", ".join(f"{r}: {n}" for r, n in unsaid.items()),
        )  # fmt: skip
    record = ShardRecord(
        file=final.name,
        samples=written,
        bytes=size,
        sha256=digest,
        unit=unit.index,
        first_input=describe(unit.items[0]) if unit.items else "",
        last_input=describe(unit.items[-1]) if unit.items else "",
    )
    write_shard_index(split_dir, record)  # where each sample starts: a rank reads only its own
    result = UnitResult(
        record, len(unit.items), dict(skipped), time.perf_counter() - start, dict(converted),
        failures,
    )  # fmt: skip
    done = asdict(result) | {"inputs_digest": inputs_digest(unit, describe)}
    atomic_write_text(split_dir / WORK_DIR / f"{final.name}.json", json.dumps(done))
    return result


def finish_split(
    split_dir: Path,
    results: Iterable[UnitResult],
    seconds: float,
    max_failed_share: float = 1.0,
    ignored: Sequence[Unread] = (),
) -> dict:
    """Write manifest, stats, the failed inputs, the files of the source no split read
    (``ignored``) and finally ``_SUCCESS``; returns the stats.
    More failed inputs than ``max_failed_share`` of them is a :class:`FailedInputsError`, and
    no ``_SUCCESS``."""
    results = sorted(results, key=lambda r: r.record.unit)
    split_dir = location(split_dir)
    stats = split_stats(results, seconds, ignored)
    failures = [f for r in results for f in r.failures]
    if isinstance(split_dir, Path):
        (split_dir / META_DIR).mkdir(parents=True, exist_ok=True)
    write_manifest(split_dir, [r.record for r in results])
    atomic_write_text(split_dir / STATS, json.dumps(stats, indent=2) + "\n")
    atomic_write_text(split_dir / FAILURES, "".join(json.dumps(f) + "\n" for f in failures))
    atomic_write_text(
        split_dir / IGNORED, "".join(json.dumps(u.as_record()) + "\n" for u in ignored)
    )
    if len(failures) > max_failed_share * stats["inputs"]:
        raise FailedInputsError(
            f"prep {split_dir.name}: {len(failures)} of {stats['inputs']} inputs failed "
            f"({len(failures) / stats['inputs']:.1%}, more than prep.max_failed_share "
            f"{max_failed_share:.1%}); each is listed with its error in {split_dir / FAILURES}"
        )
    if not stats["samples"]:  # an empty split is a failed prep, not a finished one
        why = ", ".join(f"{n} {k}" for k, n in stats["skipped"].items()) or "the encoder gave none"
        raise EmptySplitError(
            f"prep {split_dir.name}: {stats['inputs']} inputs gave no sample ({why}); check the "
            f"source's layout and the prep keys (the counts are in {split_dir / STATS})"
        )
    atomic_write_text(split_dir / SUCCESS, "")
    return stats


def split_stats(results: list[UnitResult], seconds: float, ignored: Sequence[Unread]) -> dict:
    """A split's ``stats.json``: its units' counts summed, and the unread files by reason."""
    skipped: Counter[str] = Counter()
    converted: Counter[str] = Counter()
    for r in results:
        skipped.update(r.skipped)
        converted.update(r.converted)
    return {
        "inputs": sum(r.inputs for r in results),
        "samples": sum(r.record.samples for r in results),
        "skipped": dict(sorted(skipped.items())),
        "skipped_total": sum(skipped.values()),
        "converted": dict(sorted(converted.items())),
        "ignored": dict(sorted(Counter(u.reason for u in ignored).items())),
        "shards": len(results),
        "bytes": sum(r.record.bytes for r in results),
        "seconds": round(seconds, 3),
    }


def _add_item(tar, item, encode: Encoder, describe, skipped: Counter, converted: Counter):
    """Add the samples of one input to ``tar``, counting skips and conversions; returns how
    many samples were added, and the one line of the error that stopped the input (or None).

    An unexpected error (an EIO from a network filesystem, a decoder's bug) stops this input
    only: the samples it gave before stay, it is counted as ``failed`` and listed in
    ``failures.jsonl``. One such error among 200 k reads used to end the whole prep."""
    added, failure = 0, None
    for out in _encoded(encode, item):
        if isinstance(out, _Failure):
            skipped[FAILED] += 1
            failure = out.line
            if skipped[FAILED] <= WARNINGS_PER_REASON:
                log.warning("failed %s (%s)", describe(item), out.line)
        elif isinstance(out, SkipSample):
            skipped[out.reason] += 1
            if skipped[out.reason] <= WARNINGS_PER_REASON:
                log.warning("skipped %s (%s)", describe(item), out)
        elif isinstance(out, Converted):
            converted[out.reason] += 1
        else:
            _add_sample(tar, out)
            added += 1
    return added, failure


@dataclass(frozen=True)
class _Failure:
    line: str  # the error's type and first line


def _encoded(encode: Encoder, item) -> Iterator[Sample | SkipSample | Converted | _Failure]:
    """The encoder's output for ``item``, a raised skip turned into the last value, and any
    other error into a :class:`_Failure`."""
    try:
        yield from encode(item)
    except SkipSample as skip:
        yield skip
    except Exception as err:  # any error of one input is that input's, not the prep's
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        yield _Failure(f"{type(err).__name__}: {first}".rstrip(": "))


def _add_sample(tar: tarfile.TarFile, sample: Sample) -> None:
    for ext, payload in sample.members.items():
        info = tarfile.TarInfo(f"{sample.key}.{ext}")
        info.size = len(payload)
        info.mtime = 0
        info.mode = 0o644
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(payload))
