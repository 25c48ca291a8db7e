"""The prep job every modality shares: list -> fit -> plan -> Ray -> shards -> manifest, stats,
``_SUCCESS``, with resume.

The reader (``data_prep.corpus``) says what the inputs are and how one becomes samples; this
module does the rest the same way for all of them: inputs are listed (a bad source fails before
any work) onto the driver's disk (``data_prep.listing``: its memory does not grow with the
corpus), the reader fits once on the driver, each split is planned into work units
(``data_prep.plan``, pure) and written one shard per Ray task (``data_prep.ray_job``), finished
units are kept on a rerun once checked against their shards. The output records the settings
that made it and is locked while a prep writes (``data_prep.prep_record``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_prep.corpus import DEFAULT_MAX_FAILED_SHARE, CorpusReader, SourceError
from data_prep.listing import PathDigests, on_disk
from data_prep.plan import UnitPlan
from data_prep.prep_record import refuse_inside, settings_of, writing
from data_prep.ray_job import prepare_split, ray_session
from data_prep.shard_format import LABELS, atomic_write_text
from data_prep.store import absolute, is_url, location
from data_prep.unread import Unread, summary, unread_files

log = logging.getLogger(__name__)

# A prep of at most this many inputs, with no Ray head asked for (num_cpus, ray_address), runs in
# this process: starting a local head costs 8-12 s, more than writing a few dozen samples. The
# shards are the same either way.
IN_PROCESS_INPUTS = 48


def run_prep(
    reader: CorpusReader, cfg: Any, rebuild: bool = False, check_hashes: bool = False
) -> dict[str, dict]:
    """Prepare every configured split of ``cfg.source`` into ``cfg.out/<split>``; returns
    ``{split: stats}``. An output made with other settings is refused, or emptied first with
    ``rebuild``. Finished shards are kept when their size is right, and with ``check_hashes``
    their sha256 too (a forced prep; `maskmill verify` finds what it repairs)."""
    # Absolute paths: Ray workers do not share the driver's working directory.
    remote = [f"prep.{k} {v}" for k, v in reader.sources(cfg).items() if is_url(v)]
    if remote and not reader.reads_stores:  # these readers walk a file tree with os calls
        raise SourceError(
            f"{remote[0]}: the {reader.modality} reader reads the raw corpus from a folder; "
            "mount the bucket (s3fs, rclone mount, mountpoint-s3) or copy it, and name that "
            "folder (prep.out may be s3://...)"
        )
    sources = {k: absolute(v) for k, v in reader.sources(cfg).items()}
    cfg = dataclasses.replace(cfg, **sources, out=absolute(cfg.out))
    if not is_url(cfg.out):
        refuse_inside(Path(cfg.out), {k: v for k, v in sources.items() if not is_url(v)})
    with listed(reader, cfg) as (items, unread):
        return _prepared(reader, cfg, items, unread, rebuild, check_hashes)


@contextlib.contextmanager
def listed(reader: CorpusReader, cfg: Any) -> Iterator[tuple[dict, dict]]:
    """``({split: its inputs}, {split: the files no split took})`` for the life of the context:
    the inputs on the driver's disk (``data_prep.listing``), not in its memory."""
    with contextlib.ExitStack() as listings:
        with _store_listing(reader, cfg):
            items = {split: listings.enter_context(on_disk(reader.items(cfg, split)))
                     for split in cfg.splits}  # fmt: skip
            unread = unread_by_split(reader, cfg, items)
        yield items, unread


def _prepared(reader, cfg, items: dict, unread: dict, rebuild: bool, check_hashes: bool):
    said = summary([u for us in unread.values() for u in us], reader.modality)
    for split, split_items in items.items():
        if not split_items:
            others = [s for s in cfg.splits if s != split]
            hint = f"; to prepare the others alone: splits=[{','.join(others)}]" if others else ""
            why = f"; {said}" if any(unread.values()) else ""
            raise SourceError(
                f"{Path(cfg.source) / split} holds no inputs ({reader.layout}){why}{hint}"
            )
    if any(unread.values()):
        log.warning("%s (each listed in its split's .maskmill/ignored.jsonl)", said)
    out = location(cfg.out)
    with writing(out, settings_of(cfg), rebuild):
        return _write_splits(reader, cfg, items, out, check_hashes, unread)


@contextlib.contextmanager
def _store_listing(reader: CorpusReader, cfg: Any):
    """A source in a store that cannot be listed (no credentials, no bucket, no network) is one
    line naming it, before any work, not a client library's traceback."""
    try:
        yield
    except SourceError:
        raise
    except Exception as err:
        remote = [f"prep.{k} {v}" for k, v in reader.sources(cfg).items() if is_url(v)]
        if not remote:
            raise
        raise SourceError(
            f"{remote[0]} cannot be listed: {type(err).__name__}: {err} (credentials come from "
            "the environment, ~/.aws or an instance role; AWS_ENDPOINT_URL names another "
            "S3-API server)"
        ) from None


def unread_by_split(reader: CorpusReader, cfg: Any, items: dict) -> dict[str, list[Unread]]:
    """The files under the sources that no split read, each in the records of one split: the
    split its source key is for (audio's ``labelled_train``), else the split folder it lies in,
    else the first split."""
    found: dict[str, list[Unread]] = {split: [] for split in cfg.splits}
    if reader.input_file is None:
        return found
    used = PathDigests(
        reader.input_file(cfg, item) for split_items in items.values() for item in split_items
    )
    folders = (set(cfg.splits), {"train", "val", *cfg.splits})
    for key, root in reader.sources(cfg).items():
        own = [s for s, k in reader.optional_splits.items() if k == key and s in found]
        for u in unread_files([location(root)], used, reader.layout_file, reader.reads_format,
                              folders):  # fmt: skip
            top = u.path.removeprefix(str(root).rstrip("/") + "/").split("/")[0]
            split = own[0] if len(own) == 1 else top if top in found else cfg.splits[0]
            found[split].append(u)
    return found


def _write_splits(
    reader: CorpusReader, cfg: Any, items: dict, out: Path, check_hashes: bool, unread: dict
) -> dict[str, dict]:
    small = (
        cfg.ray_address is None
        and cfg.num_cpus is None  # a Ray head of a size asked for is started as asked
        and sum(map(len, items.values())) <= IN_PROCESS_INPUTS
    )
    stats = {}
    failed_share = getattr(cfg, "max_failed_share", DEFAULT_MAX_FAILED_SHARE)
    with contextlib.nullcontext() if small else ray_session(cfg.num_cpus, cfg.ray_address):
        state = reader.fit(cfg, items.get("train", ()))  # its steps may run as Ray tasks
        labels = reader.labels(cfg)
        if labels is not None:
            atomic_write_text(out / LABELS, json.dumps(labels, indent=1) + "\n")
        encode = functools.partial(reader.encode, cfg, state)
        for split, split_items in items.items():
            units = UnitPlan(split_items, cfg.samples_per_shard, cfg.seed)
            stats[split] = prepare_split(
                units, out / split, encode, desc=f"prep {split}",
                max_failed_share=failed_share, check_hashes=check_hashes, ignored=unread[split],
                max_bytes=getattr(cfg, "shard_bytes", 0),
                memory_mb=getattr(cfg, "task_memory_mb", 0),
            )  # fmt: skip
    return stats


def summary_line(split: str, stats: dict) -> str:
    skipped = ", ".join(f"{k}: {v}" for k, v in stats["skipped"].items()) or "none"
    converted = ", ".join(f"{k}: {v}" for k, v in stats.get("converted", {}).items())
    return (
        f"prep {split}: {stats['inputs']} inputs -> {stats['samples']} samples in "
        f"{stats['shards']} shards ({stats['bytes'] / 1e6:.1f} MB, {stats['seconds']:.1f}s); "
        f"skipped {stats['skipped_total']} ({skipped})"
        + (f"; converted {converted}" if converted else "")
        + (f"; ignored {sum(stats['ignored'].values())} files" if stats.get("ignored") else "")
    )
