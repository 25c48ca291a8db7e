"""The speech demo's selection split: every voice once more under digits/select, and every
other file byte for byte as without it (recipes are chosen there; the reported val split and
what pretraining reads do not move)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from data_prep.audio.demo import SpeechDemoConfig, write_speech_demo


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def test_the_selection_split_adds_digits_select_and_changes_nothing_else(tmp_path):
    tiny = dict(speakers=2, chapters_per_speaker=1, sentences_per_chapter=1, held_out_voices=1,
                digit_strings=2, repeats=1)  # fmt: skip
    plain = _files(write_speech_demo(SpeechDemoConfig(out=str(tmp_path / "a"), **tiny)))
    both = write_speech_demo(
        SpeechDemoConfig(out=str(tmp_path / "b"), selection_split=True, **tiny)
    )
    files = _files(both)
    assert {k: v for k, v in files.items() if not k.startswith("digits/select/")} == plain
    select = sorted(k for k in files if k.startswith("digits/select/") and k.endswith(".flac"))
    assert len(select) == 3 * 2  # every voice (2 readers, 1 held out) says each string once
    transcripts = list((both / "digits" / "select").rglob("*.trans.txt"))
    assert sum(len(t.read_text().splitlines()) for t in transcripts) == len(select)
