"""The lean shard reader the training loader uses agrees with webdataset, member for member."""

import io
import tarfile

import pytest
import webdataset as wds

from data_prep.shard_format import read_shard_samples, shard_urls


def test_lean_reader_yields_what_webdataset_yields(prepared):
    for split in ("train", "val"):
        for url in shard_urls(prepared / split):
            ref = list(wds.WebDataset(url, shardshuffle=False))
            ours = list(read_shard_samples(url))
            assert [s["__key__"] for s in ours] == [s["__key__"] for s in ref]
            for a, b in zip(ours, ref):
                assert {k: v for k, v in a.items() if k != "__url__"} == {
                    k: v for k, v in b.items() if k not in ("__url__", "__local_path__")
                }


def test_members_not_asked_for_are_skipped(prepared):
    (url, *_) = shard_urls(prepared / "train")
    sample = next(read_shard_samples(url, members=("cls",)))
    assert set(sample) == {"__key__", "__url__", "cls"}


def test_a_tar_that_is_not_ours_is_refused_by_name(tmp_path):
    path = tmp_path / "pax.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("a" * 120 + ".jpg")  # too long for ustar: a pax header
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(ValueError, match=r"pax\.tar: tar member type b'x' \(pax"):
        list(read_shard_samples(path))
