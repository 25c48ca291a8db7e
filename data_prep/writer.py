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
    member_header,
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
    """What one work unit wrote: its shards (one, or more when its output passed the shard
    size and rolled over), and what it read, skipped and converted."""

    records: list[ShardRecord]
    inputs: int
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    converted: dict[str, int] = field(default_factory=dict)
    # inputs an unexpected error stopped: {"input": its name, "error": the error's one line}
    failures: list[dict] = field(default_factory=list)
    # the unit's index (a unit that gave no sample has no shard record to name it); None in
    # completion records written before: their first record names it
    index: int | None = None

    @property
    def unit(self) -> int:
        return self.records[0].unit if self.index is None else self.index

    @property
    def samples(self) -> int:
        return sum(r.samples for r in self.records)

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.records)


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
    # "record": written before a unit could roll over into several shards
    records = [
        ShardRecord(**r) for r in (data["records"] if "records" in data else [data["record"]])
    ]
    if data.get("inputs_digest", inputs_digest(unit, describe)) != inputs_digest(unit, describe):
        return None
    for record in records:
        problem = shard_problem(split_dir / record.file, record, sha256=sha256)
        if problem:
            log.warning("%s: %s; writing its unit again", record.file, problem)
            return None
    return UnitResult(
        records, data["inputs"], data["skipped"], data["seconds"], data.get("converted", {}),
        data.get("failures", []), unit.index,
    )  # fmt: skip


def write_unit(
    unit: WorkUnit, split_dir: Path, encode: Encoder, describe=str, max_bytes: int = 0
) -> UnitResult:
    """Encode every item of ``unit`` into shard ``unit.index`` (and, with ``max_bytes``, its
    next parts once a shard reaches that size); bad items are skipped, counted.
    Into a store (``split_dir`` a URL's path): written in a local staging folder, then
    published: the shards, their sample indexes, and last the completion record."""
    if isinstance(split_dir, Path):
        return _write_unit_here(unit, split_dir, encode, describe, max_bytes)
    with tempfile.TemporaryDirectory(prefix="maskmill-stage-") as stage:
        result = _write_unit_here(unit, Path(stage), encode, describe, max_bytes)
        names = []
        for record in result.records:
            names += [record.file, index_path(Path(stage), record).relative_to(stage).as_posix()]
        publish(Path(stage), split_dir, [*names, f"{WORK_DIR}/{shard_name(unit.index)}.json"])
    return result


def _write_unit_here(
    unit: WorkUnit, split_dir: Path, encode: Encoder, describe, max_bytes: int
) -> UnitResult:
    start = time.perf_counter()
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / WORK_DIR).mkdir(parents=True, exist_ok=True)
    skipped: Counter[str] = Counter()
    converted: Counter[str] = Counter()
    failures: list[dict] = []
    first, last = (describe(unit.items[0]), describe(unit.items[-1])) if unit.items else ("", "")
    with _Parts(split_dir, unit.index, max_bytes, first, last) as parts:
        for item in unit.items:
            failure = _add_item(parts, item, encode, describe, skipped, converted)
            if failure:
                failures.append({"input": describe(item), "error": failure})
    unsaid = {r: n - WARNINGS_PER_REASON for r, n in skipped.items() if n > WARNINGS_PER_REASON}
    if unsaid:  # the first few of each reason were named; the rest are counted
        log.warning(
            "%s: %d more skipped, not named (%s); every count is in stats.json",
            shard_name(unit.index), sum(unsaid.values()),
            ", ".join(f"{r}: {n}" for r, n in unsaid.items()),
        )  # fmt: skip
    for record, offsets in zip(parts.records, parts.offsets):  # a rank reads only its own
        write_shard_index(split_dir, record, offsets)
    result = UnitResult(
        parts.records, len(unit.items), dict(skipped), time.perf_counter() - start,
        dict(converted), failures, unit.index,
    )  # fmt: skip
    done = asdict(result) | {"inputs_digest": inputs_digest(unit, describe)}
    atomic_write_text(split_dir / WORK_DIR / f"{shard_name(unit.index)}.json", json.dumps(done))
    return result


_ZEROS = bytes(tarfile.BLOCKSIZE)


class _Parts:
    """The shards of one unit, written a tar at a time: ``shard-NNNNNN.tar``, then with
    ``max_bytes`` (a shard at least that large is closed) ``shard-NNNNNN-001.tar``, ... Each is
    a plain ustar file (``shard_format.member_header``: what ``tarfile`` writes, built directly)
    whose sample offsets are noted as it grows, renamed into place whole; parts an earlier
    attempt left beyond this one's are removed."""

    def __init__(self, split_dir: Path, unit: int, max_bytes: int, first: str, last: str):
        self.split_dir, self.unit, self.max_bytes = split_dir, unit, max_bytes
        self.inputs = (first, last)
        self.records: list[ShardRecord] = []
        self.offsets: list[list[int]] = []
        self._open()

    def _open(self) -> None:
        self.final = self.split_dir / part_name(self.unit, len(self.records))
        self.tmp = self.final.with_name(f".{self.final.name}.tmp-{os.getpid()}")
        # open across add() calls, closed by _close() or __exit__: no with-block fits
        self.raw = open(self.tmp, "wb")  # noqa: SIM115
        self.starts: list[int] = []

    def add(self, sample: Sample) -> None:
        self.starts.append(self.raw.tell())
        chunks = []  # one write a sample: six a sample were 2% of the text prep
        for ext, payload in sample.members.items():
            pad = _ZEROS[: -len(payload) % tarfile.BLOCKSIZE]
            chunks += (member_header(f"{sample.key}.{ext}", len(payload)), payload, pad)
        self.raw.write(b"".join(chunks))
        if self.max_bytes and self.raw.tell() >= self.max_bytes:
            self._close()
            self._open()

    def _close(self) -> None:
        end = self.raw.tell()
        self.raw.write(
            b"\0" * (2 * tarfile.BLOCKSIZE)
        )  # the end marker, then padding to a whole record
        self.raw.write(b"\0" * (-(end + 2 * tarfile.BLOCKSIZE) % tarfile.RECORDSIZE))
        self.raw.flush()
        os.fsync(self.raw.fileno())
        self.raw.close()
        digest, size = file_sha256(self.tmp), self.tmp.stat().st_size
        os.replace(self.tmp, self.final)
        self.records.append(ShardRecord(self.final.name, len(self.starts), size, digest,
                                        self.unit, *self.inputs))  # fmt: skip
        self.offsets.append([*self.starts, end])

    def __enter__(self) -> _Parts:
        return self

    def __exit__(self, kind, err, tb) -> None:
        try:
            # No empty part: a unit whose inputs gave no sample (all broken; a text file with
            # no document held out for val) writes no shard, where it wrote a 0-sample one.
            if kind is None and self.starts:
                self._close()
        finally:
            self.raw.close()
            self.tmp.unlink(missing_ok=True)
        first = self.split_dir / shard_name(self.unit)
        for stale in [first, *self.split_dir.glob(f"shard-{self.unit:06d}-*.tar")]:
            if stale.name not in {r.file for r in self.records}:
                stale.unlink(missing_ok=True)


def part_name(unit: int, part: int) -> str:
    """Part ``part`` of unit ``unit``: the unit's shard name for the first, numbered after."""
    return shard_name(unit) if part == 0 else f"shard-{unit:06d}-{part:03d}.tar"


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
    results = sorted(results, key=lambda r: r.unit)
    split_dir = location(split_dir)
    stats = split_stats(results, seconds, ignored)
    failures = [f for r in results for f in r.failures]
    if isinstance(split_dir, Path):
        (split_dir / META_DIR).mkdir(parents=True, exist_ok=True)
    write_manifest(split_dir, [record for r in results for record in r.records])
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
        "samples": sum(r.samples for r in results),
        "skipped": dict(sorted(skipped.items())),
        "skipped_total": sum(skipped.values()),
        "converted": dict(sorted(converted.items())),
        "ignored": dict(sorted(Counter(u.reason for u in ignored).items())),
        "shards": sum(len(r.records) for r in results),
        "bytes": sum(r.bytes for r in results),
        "seconds": round(seconds, 3),
    }


def _add_item(parts: _Parts, item, encode: Encoder, describe, skipped: Counter, converted: Counter):
    """Add the samples of one input to the unit's shards, counting skips and conversions;
    returns the one line of the error that stopped the input (or None).

    An unexpected error (an EIO from a network filesystem, a decoder's bug) stops this input
    only: the samples it gave before stay, it is counted as ``failed`` and listed in
    ``failures.jsonl``. One such error among 200 k reads used to end the whole prep."""
    failure = None
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
            parts.add(out)
    return failure


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
