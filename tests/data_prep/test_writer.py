import hashlib
import tarfile

import pytest

from data_prep.plan import WorkUnit
from data_prep.shard_format import META_DIR, WORK_DIR, read_manifest, shard_name
from data_prep.writer import Sample, SkipSample, finish_split, unit_is_done, write_unit


def _encode(item: str):
    if item.startswith("bad"):
        raise SkipSample("broken")
    yield Sample(key=item, members={"txt": item.encode(), "cls": b"1"})


def test_written_shard_is_a_plain_tar_with_contiguous_samples(tmp_path):
    result = write_unit(WorkUnit(0, ("a", "b", "bad1", "c")), tmp_path, _encode)
    with tarfile.open(tmp_path / shard_name(0)) as tar:
        names = tar.getnames()
    assert names == ["a.txt", "a.cls", "b.txt", "b.cls", "c.txt", "c.cls"]
    assert result.samples == 3 and result.skipped == {"broken": 1}


def test_manifest_hash_and_size_match_the_file(tmp_path):
    results = [write_unit(WorkUnit(i, (f"k{i}x", f"k{i}y")), tmp_path, _encode) for i in range(3)]
    finish_split(tmp_path, results, seconds=0.1)
    for record in read_manifest(tmp_path):
        data = (tmp_path / record.file).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record.sha256
        assert len(data) == record.bytes


def test_same_inputs_give_byte_identical_shards(tmp_path):
    a = write_unit(WorkUnit(0, ("x", "y")), tmp_path / "a", _encode)
    b = write_unit(WorkUnit(0, ("x", "y")), tmp_path / "b", _encode)
    assert [r.sha256 for r in a.records] == [r.sha256 for r in b.records]


def test_a_unit_that_gives_no_sample_writes_no_shard(tmp_path):
    """Never an empty shard (issue: prep at corpus scale): a unit whose every input was skipped
    is counted and recorded done, with no shard and no manifest row; it wrote a 0-sample shard
    before (the demo text corpus's val split had one: a file with no document held out)."""
    (tmp_path / shard_name(1)).write_bytes(b"an earlier attempt's shard")
    empty = write_unit(WorkUnit(1, ("bad1", "bad2")), tmp_path, _encode)
    assert empty.records == [] and empty.skipped == {"broken": 2}
    assert not (tmp_path / shard_name(1)).exists()
    assert unit_is_done(tmp_path, WorkUnit(1, ("bad1", "bad2"))) is not None  # not redone
    full = write_unit(WorkUnit(0, ("a", "b")), tmp_path, _encode)
    stats = finish_split(tmp_path, [full, empty], seconds=0.1)
    assert [r.file for r in read_manifest(tmp_path)] == [shard_name(0)]
    assert stats["samples"] == 2 and stats["inputs"] == 4


def test_a_failing_unit_leaves_no_shard_and_no_record(tmp_path, monkeypatch):
    """Writing the shard fails (the disk is full): an input's own error is only that input's
    (test_failures), but this one is the unit's, which leaves nothing behind."""
    import errno

    import data_prep.writer as writer

    written = []

    def full(name, size):
        written.append(name)
        if len(written) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(name, size)

    real = writer.member_header
    monkeypatch.setattr(writer, "member_header", full)
    with pytest.raises(OSError, match="No space left"):
        write_unit(WorkUnit(0, ("a", "boom")), tmp_path, _encode)
    assert not (tmp_path / shard_name(0)).exists()
    assert unit_is_done(tmp_path, WorkUnit(0, ("a", "boom"))) is None
    assert [p.name for p in tmp_path.iterdir() if p.name != META_DIR] == []


def test_a_shard_without_its_record_is_redone(tmp_path):
    unit = WorkUnit(0, ("a",))
    write_unit(unit, tmp_path, _encode)
    assert unit_is_done(tmp_path, unit) is not None
    (tmp_path / WORK_DIR / f"{shard_name(0)}.json").unlink()
    assert unit_is_done(tmp_path, unit) is None


def test_a_record_is_checked_against_the_shard_and_the_inputs(tmp_path):
    """A completion record is checked: a resized or deleted shard, or a unit now planned over
    other inputs, is written again. A same-size byte change is `maskmill verify`'s to find (the
    sha256 written with the shard): a resume checks sizes, not hashes."""
    from data_prep.shard_format import verify_split

    unit = WorkUnit(0, ("a", "b"))
    result = write_unit(unit, tmp_path, _encode)
    finish_split(tmp_path, [result], 0.0)
    assert unit_is_done(tmp_path, unit) is not None
    assert unit_is_done(tmp_path, WorkUnit(0, ("a", "c"))) is None
    shard = tmp_path / shard_name(0)
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # inside the first member's data: the size stays
    shard.write_bytes(bytes(data))
    assert unit_is_done(tmp_path, unit) is not None
    assert "sha256" in verify_split(tmp_path)[1][shard.name]
    shard.write_bytes(bytes(data[:-512]))
    assert unit_is_done(tmp_path, unit) is None
    shard.unlink()
    assert unit_is_done(tmp_path, unit) is None


def test_keys_with_dots_are_rejected():
    with pytest.raises(ValueError, match="no dots"):
        Sample(key="a.b", members={"txt": b""})


def test_split_without_success_marker_is_refused(tmp_path):
    write_unit(WorkUnit(0, ("a",)), tmp_path, _encode)
    with pytest.raises(RuntimeError, match="_SUCCESS"):
        read_manifest(tmp_path)


def _segments(item: str):
    """An input that makes several samples: ``name:n`` -> n segments; a bad segment is skipped
    and the encoder goes on; ``name:n!`` breaks after its segments (a truncated file)."""
    name, _, rest = item.partition(":")
    for i in range(int(rest.rstrip("!"))):
        if i == 1 and name == "gappy":
            yield SkipSample("too_short")
            continue
        yield Sample(key=f"{name}_{i}", members={"txt": f"{name}{i}".encode()})
    if rest.endswith("!"):
        raise SkipSample("truncated")


def test_an_input_may_give_several_samples_and_skips_are_counted_by_reason(tmp_path):
    result = write_unit(WorkUnit(0, ("a:3", "gappy:3", "b:0", "cut:2!")), tmp_path, _segments)
    with tarfile.open(tmp_path / shard_name(0)) as tar:
        names = tar.getnames()
    assert names == [
        "a_0.txt",
        "a_1.txt",
        "a_2.txt",
        "gappy_0.txt",
        "gappy_2.txt",
        "cut_0.txt",
        "cut_1.txt",
    ]
    assert result.inputs == 4 and result.samples == 7
    assert result.skipped == {"too_short": 1, "truncated": 1}


def test_skips_are_named_a_few_at_a_time_and_the_rest_counted(tmp_path, caplog):
    """Before: one warning per skipped input, 10^5 lines for a corpus with 10^5 bad records."""
    items = (*(f"bad{i}" for i in range(10)), "a")
    with caplog.at_level("WARNING", logger="data_prep.writer"):
        result = write_unit(WorkUnit(0, items), tmp_path, _encode)
    assert result.skipped == {"broken": 10}
    named = [r.message for r in caplog.records if r.message.startswith("skipped bad")]
    assert len(named) == 3
    assert "7 more skipped, not named (broken: 7); every count is in stats.json" in caplog.text


def _big(item: str):
    """Ten samples of ~10 KB each per input."""
    for n in range(10):
        yield Sample(key=f"{item}_{n}", members={"bin": bytes([n]) * 10_000, "cls": b"1"})


def test_a_unit_rolls_over_into_parts_each_below_twice_the_limit(tmp_path):
    """Plan by output: a unit whose output passes ``max_bytes`` goes on in a next part, so no
    shard holds much more than the limit (one sample more at most) and none is empty; the parts
    hold, in order, the samples one unbounded shard holds."""
    from data_prep.shard_format import read_shard_samples

    unit = WorkUnit(3, ("a", "b", "c", "d"))
    whole = write_unit(unit, tmp_path / "whole", _big)
    parts = write_unit(unit, tmp_path / "parts", _big, max_bytes=64 * 1024)
    names = [r.file for r in parts.records]
    assert names[:2] == [shard_name(3), "shard-000003-001.tar"] and len(names) >= 5
    assert all(r.samples > 0 for r in parts.records)
    assert all(r.bytes < 2 * 64 * 1024 for r in parts.records)  # tar pads to 10 KB records
    keys = [
        s["__key__"] for r in parts.records for s in read_shard_samples(tmp_path / "parts" / r.file)
    ]
    assert keys == [s["__key__"] for s in read_shard_samples(tmp_path / "whole" / shard_name(3))]
    assert parts.samples == whole.samples == 40
    finish_split(tmp_path / "parts", [parts], seconds=0.1)
    assert [r.file for r in read_manifest(tmp_path / "parts")] == names
    done = unit_is_done(tmp_path / "parts", unit)
    assert done is not None and [r.file for r in done.records] == names
    (tmp_path / "parts" / names[2]).write_bytes(b"cut")  # one part damaged: the unit again
    assert unit_is_done(tmp_path / "parts", unit) is None


@pytest.mark.parametrize(
    "name, size",
    [("a.txt", 0), ("n01440764_10026.jpg", 110_517), ("k" * 95 + ".json", 3),
     ("x" * 90 + "/" + "y" * 40 + ".cls", 1)],
)  # fmt: skip
def test_a_member_header_is_what_tarfile_writes(name, size):
    from data_prep.shard_format import member_header

    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = size, 0, 0o644, "", ""
    assert member_header(name, size) == info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "uint8", "float32"])
def test_npy_zst_members_are_what_np_save_and_zstd_write(dtype):
    import io

    import numpy as np
    import zstandard

    from data_prep.shard_format import npy_zst_array, npy_zst_bytes

    array = (np.arange(2 * 128) % 251).astype(dtype).reshape(2, 128)
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    assert npy_zst_bytes(array) == zstandard.ZstdCompressor(level=3).compress(buf.getvalue())
    assert np.array_equal(npy_zst_array(npy_zst_bytes(array)), array)
