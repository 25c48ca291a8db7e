"""LibriLight and LibriSpeech-form folders read into items, quirks named, speakers held out."""

import json

import pytest

from data_prep.audio.layout import (
    LayoutError,
    detect_layout,
    held_out_speakers,
    librilight_items,
    librilight_speakers,
    librispeech_items,
    voice_activity,
)
from tests.conftest import traced_peak


@pytest.fixture
def librilight(tmp_path):
    root = tmp_path / "librilight"
    chapters = {
        ("small", "100", "2001", "ch_a"): {
            "speaker": "100",
            "snr": 12.5,
            "voice_activity": [[0.4, 3.1], [3.6, 9.0]],
        },
        ("small", "100", "2001", "ch_b"): None,  # no JSON
        ("small", "205", "3001", "ch_c"): "{not json",
        ("medium", "205", "3002", "ch_d"): {"speaker": "205", "voice_activity": []},
    }
    for (subset, speaker, book, chapter), meta in chapters.items():
        folder = root / subset / speaker / book
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{chapter}.flac").write_bytes(b"fLaC")
        if isinstance(meta, dict):
            (folder / f"{chapter}.json").write_text(json.dumps(meta))
        elif meta is not None:
            (folder / f"{chapter}.json").write_text(meta)
    return root


@pytest.fixture
def librispeech(tmp_path):
    root = tmp_path / "librispeech"
    folder = root / "19" / "198"
    folder.mkdir(parents=True)
    for utt in ("0000", "0001", "0002"):
        (folder / f"19-198-{utt}.flac").write_bytes(b"fLaC")
    (folder / "19-198.trans.txt").write_text("19-198-0000 FOUR SEVEN ONE\n19-198-0001 NINE OH\n")
    return root


def test_librilight_chapters_carry_their_voice_activity_or_what_was_wrong(librilight):
    assert detect_layout(librilight) == "librilight"
    listed = list(librilight_items(librilight))
    assert [i.path for i in listed] == [  # path order, as sorting every path gave it
        "medium/205/3002/ch_d.flac",
        "small/100/2001/ch_a.flac",
        "small/100/2001/ch_b.flac",
        "small/205/3001/ch_c.flac",
    ]
    items = {i.chapter: i for i in listed}
    assert items["ch_a"].speaker == "100" and items["ch_a"].book == "2001"
    # the JSON is read by the task that cuts the chapter, not by the listing
    assert voice_activity(items["ch_a"]) == (((0.4, 3.1), (3.6, 9.0)), None)
    assert items["ch_b"].problem == "missing_json"
    assert voice_activity(items["ch_b"]) == (None, "missing_json")
    assert items["ch_c"].problem is None and voice_activity(items["ch_c"]) == (
        None,
        "unreadable_json",
    )
    assert voice_activity(items["ch_d"]) == ((), None)
    assert librilight_speakers(librilight) == {"100", "205"}


def test_a_chapter_over_task_bytes_is_listed_in_pieces(librilight):
    """Only the listing's sizes decide it: 4-byte files at task_bytes 3 are two pieces each."""
    (librilight / "small" / "100" / "2001" / "ch_a.flac").write_bytes(b"fLaC" * 4)  # 16 bytes
    pieces = [(i.chapter, i.part, i.parts) for i in librilight_items(librilight, task_bytes=5)]
    assert pieces == [("ch_d", 0, 1), ("ch_a", 0, 4), ("ch_a", 1, 4), ("ch_a", 2, 4),
                      ("ch_a", 3, 4), ("ch_b", 0, 1), ("ch_c", 0, 1)]  # fmt: skip
    assert str(next(i for i in librilight_items(librilight, 5) if i.part == 1)) == (
        "small/100/2001/ch_a.flac [piece 2 of 4]"
    )


def test_librispeech_utterances_carry_their_transcripts(librispeech):
    assert detect_layout(librispeech) == "librispeech"
    items = librispeech_items(librispeech)
    assert [i.transcript for i in items] == ["FOUR SEVEN ONE", "NINE OH", None]
    assert items[2].problem == "missing_transcript"
    assert {(i.speaker, i.book) for i in items} == {("19", "198")}


def test_an_unknown_folder_says_which_layouts_it_expected(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(LayoutError, match="neither LibriLight"):
        detect_layout(tmp_path)
    with pytest.raises(LayoutError, match="does not exist"):
        detect_layout(tmp_path / "missing")


def test_whole_speakers_are_held_out_reproducibly():
    speakers = [f"s{i}" for i in range(20)]
    held = held_out_speakers(speakers, 0.1, seed=0)
    assert len(held) == 2 and held == held_out_speakers(reversed(speakers), 0.1, seed=0)
    assert held != held_out_speakers(speakers, 0.1, seed=1)  # the seed picks them
    assert len(held_out_speakers(["a", "b", "c"], 0.01, seed=0)) == 1  # at least one
    assert held_out_speakers(["a"], 0.5, seed=0) == frozenset()  # never every speaker
    assert held_out_speakers(speakers, 0.0, seed=0) == frozenset()


def test_a_librilight_listing_holds_nothing_per_chapter_on_the_driver(tmp_path):
    """Listed a book folder at a time, the JSONs left to the tasks: the driver's Python
    allocations do not grow with the chapters (the list of items with their voice activity
    did)."""

    def listing_peak(n: int) -> tuple[int, int]:
        root = tmp_path / f"ll{n}"
        for i in range(n):
            folder = root / "small" / f"{i % 50}" / f"{i % 500}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"c{i}.flac").write_bytes(b"fLaC")
            (folder / f"c{i}.json").write_text('{"voice_activity": [[0.1, 0.9]]}')
        return traced_peak(lambda: sum(1 for _ in librilight_items(root, task_bytes=1 << 20)))

    (small, small_peak), (large, large_peak) = listing_peak(1000), listing_peak(6000)
    assert (small, large) == (1000, 6000)
    per_chapter = (large_peak - small_peak) / 5000
    assert per_chapter < 20, per_chapter  # bytes
