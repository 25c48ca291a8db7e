"""The three video layouts read into labelled items: Kinetics (the demo corpus),
Something-Something v2 and class folders (built here from the demo's clips)."""

import json
import shutil

import pytest

from data_prep.corpus import LayoutError
from data_prep.video.demo import CLASSES
from data_prep.video.layout import class_names, detect_layout, split_items
from tests.conftest import traced_peak


def test_kinetics_rows_find_their_clips_in_any_folder_and_any_container(clip_corpus):
    assert detect_layout(clip_corpus) == "kinetics"
    assert class_names(clip_corpus) == sorted(CLASSES)
    train = list(split_items(clip_corpus, "train"))
    assert len(train) == 18 + 4 and not any(i.problem for i in train)
    assert {i.file.suffix for i in train} == {".mp4", ".mkv", ".webm"}
    for item in train:
        assert item.file.is_file() and item.file.parent.name == item.label.replace(" ", "_")
    (missing,) = [i for i in split_items(clip_corpus, "val") if i.problem]
    assert missing.problem == "missing_file" and missing.label in CLASSES


def _some_videos(clip_corpus, count):
    return [i for i in split_items(clip_corpus, "train") if i.file.suffix == ".mp4"][-count:]


def test_something_something_templates_are_the_labels(clip_corpus, tmp_path):
    root = tmp_path / "ssv2"
    (root / "20bn-something-something-v2").mkdir(parents=True)
    templates = ["Pushing [something] from left to right", "Putting [something] on a surface"]
    labels = {t.replace("[", "").replace("]", ""): str(i) for i, t in enumerate(templates)}
    (root / "something-something-v2-labels.json").write_text(json.dumps(labels))
    rows = []
    for n, item in enumerate(_some_videos(clip_corpus, 3)):
        shutil.copy(item.file, root / "20bn-something-something-v2" / f"{100 + n}.webm")
        rows.append({"id": str(100 + n), "template": templates[n % 2], "placeholders": ["a"]})
    rows.append({"id": "999", "template": templates[0], "placeholders": ["a"]})  # not on disk
    (root / "something-something-v2-train.json").write_text(json.dumps(rows))
    assert detect_layout(root) == "ssv2"
    assert class_names(root) == [
        "Pushing something from left to right",
        "Putting something on a surface",
    ]
    items = list(split_items(root, "train"))
    assert [i.key for i in items] == ["100", "101", "102", "999"]
    assert [i.problem for i in items] == ["", "", "", "missing_file"]
    assert items[1].label == "Putting something on a surface"


def test_class_folders_keep_same_named_files_of_two_classes_apart(clip_corpus, tmp_path):
    videos = _some_videos(clip_corpus, 2)
    for cls, video in zip(("waving", "clapping"), videos):
        for split in ("train", "val"):
            (tmp_path / split / cls).mkdir(parents=True)
            shutil.copy(video.file, tmp_path / split / cls / "clip.mp4")
    assert detect_layout(tmp_path) == "folders"
    assert class_names(tmp_path) == ["clapping", "waving"]
    keys = [i.key for i in split_items(tmp_path, "train")]
    assert keys == ["clapping_clip", "waving_clip"]
    # walked a folder at a time, in the order sorting the paths gives ("a b/" before "a/")
    for cls in ("wave", "wave hands"):
        (tmp_path / "train" / cls).mkdir()
        shutil.copy(videos[0].file, tmp_path / "train" / cls / "clip.mp4")
    paths = [i.path for i in split_items(tmp_path, "train")]
    assert paths == sorted(paths) and len(paths) == 4


def test_a_folder_in_no_layout_is_refused_with_what_was_expected(tmp_path):
    with pytest.raises(LayoutError, match=r"train\.csv"):
        detect_layout(tmp_path)


def test_the_demo_corpus_is_the_same_bytes_every_time(tmp_path):
    """The quickstart's numbers repeat only if its corpus does: x264's threads made the mp4s
    (and so the clips) differ from run to run."""
    from data_prep.video.demo import VideoDemoConfig, write_video_demo

    def digest(out):
        cfg = VideoDemoConfig(out=str(tmp_path / out), clips_per_class=1, val_clips_per_class=1,
                              width=96, height=72, seconds=2.6, corrupt=True)  # fmt: skip
        root = write_video_demo(cfg)
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.*"))}

    first, second = digest("a"), digest("b")
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []


def test_a_kinetics_listing_holds_nothing_per_video_on_the_driver(tmp_path):
    """The table is joined to the files in a SQLite file on disk, not in a dict and a list
    (~230 bytes a video before: 1 GB at 10 M videos). ``tracemalloc`` sees Python's
    allocations; SQLite's own are bounded by its page cache (2 MB by default) and its sort
    spills to a temporary file."""

    def listing_peak(n: int) -> tuple[int, int]:
        root = tmp_path / f"k{n}"
        (root / "train" / "a").mkdir(parents=True)
        rows = ["label,youtube_id,time_start,time_end,split"]
        for i in range(n):
            (root / "train" / "a" / f"v{i:07d}_000000_000010.mp4").touch()
            rows.append(f"a,v{i:07d},0,10,train")
        rows.append("a,gone,0,10,train")  # a row without its file: an item all the same
        (root / "train.csv").write_text("\n".join(rows) + "\n")
        return traced_peak(lambda: sum(1 for _ in split_items(root, "train")))

    (small, small_peak), (large, large_peak) = listing_peak(1000), listing_peak(9000)
    assert (small, large) == (1001, 9001)
    per_video = (large_peak - small_peak) / 8000
    assert per_video < 20, per_video  # bytes; 840 before


def test_a_something_something_listing_holds_nothing_per_row_on_the_driver(tmp_path, monkeypatch):
    """The split's table, one JSON array, is decoded a row at a time into the join (the whole
    array as Python objects before: ~480 bytes a row, 80 MB for SSv2's 169 k). Blocks of 16 KiB
    here, so that both tables are several (at 1 MiB the larger is one block: its text)."""
    from data_prep import corpus

    monkeypatch.setattr(corpus, "_JSON_BLOCK", 16 << 10)

    def listing_peak(n: int) -> tuple[int, int]:
        root = tmp_path / f"s{n}"
        (root / "videos").mkdir(parents=True)
        (root / "something-something-v2-labels.json").write_text('{"Pushing something": "0"}')
        rows = [{"id": str(i), "template": "Pushing [something]", "placeholders": ["a pen"]}
                for i in range(n)]  # fmt: skip
        for i in range(n):
            (root / "videos" / f"{i}.webm").touch()
        (root / "something-something-v2-train.json").write_text(json.dumps(rows))
        return traced_peak(lambda: sum(1 for _ in split_items(root, "train")))

    (small, small_peak), (large, large_peak) = listing_peak(1000), listing_peak(9000)
    assert (small, large) == (1000, 9000)
    per_row = (large_peak - small_peak) / 8000
    assert per_row < 20, per_row  # bytes


def test_a_something_something_row_without_its_fields_is_named(tmp_path):
    (tmp_path / "something-something-v2-labels.json").write_text('{"Pushing something": "0"}')
    table = tmp_path / "something-something-v2-train.json"
    table.write_text('[{"id": "1", "template": "Pushing [something]"}, {"id": "2"}]')
    with pytest.raises(LayoutError, match="row 2 has no id and template"):
        list(split_items(tmp_path, "train"))


def test_a_file_name_that_is_not_utf8_does_not_stop_a_kinetics_listing(tmp_path):
    """The join stores names as their bytes: a stray Latin-1 name among the clips (old
    archives have them) is walked past, not an encoding error out of SQLite."""
    import os

    (tmp_path / "train" / "a").mkdir(parents=True)
    stray = os.fsencode(tmp_path / "train" / "a") + b"/caf\xe9_000000_000010.mp4"
    os.close(os.open(stray, os.O_CREAT | os.O_WRONLY))
    (tmp_path / "train" / "a" / "v1_000000_000010.mp4").touch()
    (tmp_path / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split\na,v1,0,10,train\na,gone,0,10,train\n"
    )
    found = [(i.path, i.problem) for i in split_items(tmp_path, "train")]
    assert found == [
        ("train/a/v1_000000_000010.mp4", ""),
        ("train/gone_000000_000010", "missing_file"),
    ]
