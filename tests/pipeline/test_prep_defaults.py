"""The plain command does the main case: `maskmill prep audio LIBRILIGHT OUT` and `maskmill prep
text C4 OUT` on unlabelled corpora (before: refused, the labelled splits being in the default
`splits`); a small prep runs without a Ray head and writes the shards a Ray prep writes; a demo
folder is replaced whole, a folder of one's own refused."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from data_prep.shard_format import read_manifest


def _maskmill(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd)  # fmt: skip


def test_an_unlabelled_speech_corpus_preps_with_the_plain_command(speech_corpus, tmp_path):
    proc = _maskmill("prep", "audio", str(speech_corpus / "librilight"), str(tmp_path / "out"),
                     "segment_seconds=4", "val_speakers=0.34", cwd=tmp_path)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "labelled_train, labelled_val left out: no labelled_train or labelled_val given" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == [
        ".maskmill", "train", "val",
    ]  # fmt: skip


def test_an_unlabelled_text_corpus_preps_with_the_plain_command(text_demo, tmp_path):
    proc = _maskmill("prep", "text", str(text_demo / "corpus"), str(tmp_path / "out"),
                     "seq_len=32", "vocab_size=400", cwd=tmp_path)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "labelled_train, labelled_val left out: no labelled given (add labelled=FOLDER" in out
    assert (tmp_path / "out" / "train" / ".maskmill" / "_SUCCESS").exists()


def test_a_small_prep_starts_no_ray_head_and_writes_what_ray_writes(demo_corpus, tmp_path):
    """Six images: in this process (before: 8-12 s to start a Ray head for them). The same
    shards as a prep of the same inputs through Ray tasks."""
    import shutil

    from data_prep.corpus import corpus_reader
    from data_prep.image.reader import ImagePrepConfig
    from data_prep.job import IN_PROCESS_INPUTS
    from data_prep.plan import plan_shards
    from data_prep.ray_job import prepare_split, ray_session

    small = tmp_path / "six"
    for src in sorted((demo_corpus / "train").rglob("*.JPEG"))[:6]:
        dst = small / "train" / src.relative_to(demo_corpus / "train")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    start = time.perf_counter()
    proc = _maskmill("prep", "image", str(small), str(tmp_path / "out"), "shorter_side=40",
                     "samples_per_shard=2", "splits=[train]", cwd=tmp_path)  # fmt: skip
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "ray" not in proc.stderr.lower()  # no head started, no Ray line printed
    print(f"six-image prep: {seconds:.1f} s, Ray head started: no (limit {IN_PROCESS_INPUTS})")

    reader = corpus_reader("image")
    cfg = ImagePrepConfig(source=str(small), out=str(tmp_path / "ray"), shorter_side=40,
                          samples_per_shard=2, splits=["train"])  # fmt: skip
    items = reader.items(cfg, "train")
    encode = __import__("functools").partial(reader.encode, cfg, reader.fit(cfg, items))
    with ray_session(1, None):
        prepare_split(plan_shards(items, 2, cfg.seed), tmp_path / "ray" / "train", encode)
    got = [(r.file, r.samples, r.sha256) for r in read_manifest(tmp_path / "out" / "train")]
    assert got == [(r.file, r.samples, r.sha256) for r in read_manifest(tmp_path / "ray" / "train")]


def test_demo_data_replaces_its_own_folder_whole(tmp_path):
    out = tmp_path / "demo"
    first = _maskmill("demo-data", str(out), "classes=3", "train_per_class=2", "val_per_class=1",
                      cwd=tmp_path)  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    second = _maskmill("demo-data", str(out), "classes=2", "train_per_class=2", "val_per_class=1",
                       cwd=tmp_path)  # fmt: skip
    assert second.returncode == 0, second.stderr[-2000:]
    classes = {p.name for p in (out / "train").iterdir() if p.is_dir()}
    assert len(classes) == 2  # the third class of the first run did not stay behind
