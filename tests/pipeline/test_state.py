"""A raw source's identity from its listing: one stat per directory, none per file, and every
change a corpus sees between runs (a file added, removed, renamed, replaced) shows."""

from __future__ import annotations

import os

from pipeline import state
from pipeline.state import listing_signature


def _corpus(root, classes=3, per_class=40):
    for c in range(classes):
        (root / f"n{c:08d}").mkdir(parents=True)
        for i in range(per_class):
            (root / f"n{c:08d}" / f"img_{i}.JPEG").write_bytes(b"x" * i)
    return root


def test_the_listing_costs_one_stat_per_directory_not_per_file(tmp_path, monkeypatch):
    root = _corpus(tmp_path / "raw")
    calls = []
    real = os.stat
    monkeypatch.setattr(state.os, "stat", lambda p, *a, **k: calls.append(p) or real(p, *a, **k))
    listing_signature(root)
    assert len(calls) == 4  # the root and 3 class folders, none of the 120 files
    calls.clear()
    state.tree_signature(root)  # what it replaces: a stat per file
    assert len(calls) >= 120


def test_every_change_between_runs_changes_it(tmp_path):
    root = _corpus(tmp_path / "raw")
    seen = {listing_signature(root)}
    assert listing_signature(root) in seen  # the same listing, the same identity
    (root / "n00000000" / "img_new.JPEG").write_bytes(b"new")
    seen.add(listing_signature(root))
    (root / "n00000001" / "img_3.JPEG").unlink()
    seen.add(listing_signature(root))
    os.rename(root / "n00000002" / "img_4.JPEG", root / "n00000002" / "img_4b.JPEG")
    seen.add(listing_signature(root))
    folder = root / "n00000002"
    os.utime(folder, ns=(0, 0))  # a replacement by rename leaves the names as they were:
    (folder / "tmp").write_bytes(b"other")  # the folder's mtime shows it
    os.replace(folder / "tmp", folder / "img_5.JPEG")
    seen.add(listing_signature(root))
    assert len(seen) == 5
