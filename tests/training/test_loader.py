import itertools
from collections import Counter

import pytest
import torch

from training.config import LoaderConfig
from training.loader import eval_batches, split_skip, train_loader, train_spec_for
from training.modalities.image import ImageInputConfig
from training.stream_order import assign_shards


@pytest.mark.parametrize(("shards", "slots"), [(1, 4), (3, 4), (5, 4), (8, 4), (7, 2)])
def test_every_slot_gets_the_same_number_of_shards(shards, slots):
    counts = {len(assign_shards(shards, s, slots, seed=0, epoch=0)) for s in range(slots)}
    assert len(counts) == 1 and counts.pop() >= 1


def test_an_epoch_covers_every_shard():
    read = Counter(i for s in range(4) for i in assign_shards(10, s, 4, seed=0, epoch=0))
    assert set(read) == set(range(10))


def test_epochs_reshuffle():
    assert assign_shards(10, 0, 2, 0, 0) != assign_shards(10, 0, 2, 0, 1)


def test_skip_splits_into_whole_rounds_and_a_remainder():
    assert split_skip(7, 2) == (3, 1)
    assert split_skip(6, 3) == (2, 0)
    assert split_skip(5, 0) == (5, 0)


def _spec(prepared, **kw):
    values = dict(
        batch_size=8,
        rank=0,
        world_size=1,
        seed=0,
        skip_batches=0,
        loader=LoaderConfig(workers=2, shuffle_buffer=50),
    )
    values.update(kw)
    return train_spec_for(str(prepared / "train"), "image", ImageInputConfig(32), **values)


def test_batches_have_the_promised_shape(prepared):
    images, labels, keys = next(train_loader(_spec(prepared)))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.shape == (8,) and len(keys) == 8 and all("." not in k for k in keys)


def test_uneven_shards_give_every_rank_an_endless_stream(prepared):
    # 5 train shards over 3 ranks x 2 workers: no rank may run dry, whatever the epoch length.
    for rank in range(3):
        batches = list(itertools.islice(train_loader(_spec(prepared, rank=rank, world_size=3)), 40))
        assert len(batches) == 40


def test_ranks_read_different_data(prepared):
    a = next(train_loader(_spec(prepared, rank=0, world_size=2)))[2]
    b = next(train_loader(_spec(prepared, rank=1, world_size=2)))[2]
    assert a != b


def test_resume_skips_to_exactly_the_same_batches(prepared):
    straight = list(itertools.islice(train_loader(_spec(prepared)), 12))
    resumed = list(itertools.islice(train_loader(_spec(prepared, skip_batches=7)), 5))
    for a, b in zip(straight[7:], resumed):
        assert a[2] == b[2]
        assert torch.equal(a[0], b[0])  # same crops and flips too


def test_augmentation_differs_between_epochs(prepared):
    seen = {}
    for images, _, keys in itertools.islice(
        train_loader(_spec(prepared, loader=LoaderConfig(workers=0, shuffle_buffer=1))), 40
    ):
        for img, key in zip(images, keys):
            seen.setdefault(key, []).append(img)
    repeated = [v for v in seen.values() if len(v) > 1]
    assert repeated and any(not torch.equal(v[0], v[1]) for v in repeated)


def test_eval_stream_reads_every_sample_once_in_order(prepared):
    keys = [
        k
        for _, _, ks in eval_batches(str(prepared / "val"), "image", ImageInputConfig(32), 5)
        for k in ks
    ]
    assert len(keys) == len(set(keys)) == 24
    assert keys == [
        k
        for _, _, ks in eval_batches(str(prepared / "val"), "image", ImageInputConfig(32), 7)
        for k in ks
    ]


def test_pickled_members_in_a_shard_are_never_unpickled(tmp_path, prepared):
    import io
    import pickle
    import shutil
    import tarfile

    from data_prep.shard_format import SUCCESS, read_manifest, write_manifest

    class Trap:
        def __reduce__(self):
            return (open, (str(tmp_path / "UNPICKLED"), "w"))

    split = tmp_path / "val"
    shutil.copytree(prepared / "val", split)
    records = read_manifest(split)
    shard = split / records[0].file
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data))
            if member.name.endswith(".cls"):
                for ext in ("pyd", "pickle"):
                    trap = pickle.dumps(Trap())
                    info = tarfile.TarInfo(member.name.rsplit(".", 1)[0] + "." + ext)
                    info.size = len(trap)
                    tar.addfile(info, io.BytesIO(trap))
    write_manifest(split, records)
    (split / SUCCESS).parent.mkdir(exist_ok=True)
    (split / SUCCESS).touch()
    list(eval_batches(str(split), "image", ImageInputConfig(32), 8))
    spec = train_spec_for(
        str(split),
        "image",
        ImageInputConfig(32),
        batch_size=4,
        rank=0,
        world_size=1,
        seed=0,
        skip_batches=0,
        loader=LoaderConfig(workers=0),
    )
    assert len(list(itertools.islice(train_loader(spec), 3))) == 3
    assert not (tmp_path / "UNPICKLED").exists()


def test_resume_late_in_a_run_reads_only_what_it_emits(prepared, monkeypatch):
    """Resuming 6 epochs in: finished epochs and spent shards are never opened, only emitted
    samples are decoded, and the batches are those of the uninterrupted stream."""
    import training.loader as loader_module
    from training.modalities import modality

    spec = dict(loader=LoaderConfig(workers=0, shuffle_buffer=10), batch_size=8)
    straight = list(itertools.islice(train_loader(_spec(prepared, **spec)), 80))
    opened, decoded = [], []
    real_read, ops = loader_module.indexed_shard_samples, modality("image").ops
    monkeypatch.setattr(
        loader_module,
        "indexed_shard_samples",
        lambda url, members, keep: opened.append(url) or real_read(url, members, keep),
    )
    monkeypatch.setitem(
        modality("image").__dict__,
        "ops",
        type(ops)(
            decode=lambda *a: decoded.append(a[1]["__key__"]) or ops.decode(*a),
            tokenize=ops.tokenize,
            tasks=ops.tasks,
            reconstruction_figure=ops.reconstruction_figure,
        ),
    )
    resumed = list(itertools.islice(train_loader(_spec(prepared, skip_batches=75, **spec)), 5))
    for a, b in zip(straight[75:], resumed):
        assert a[2] == b[2] and torch.equal(a[0], b[0])
    assert len(decoded) <= 5 * 8 + 1  # nothing skipped is decoded (webdataset's batcher reads
    # one sample ahead to close a batch)
    assert len(opened) <= 2 * 5  # the current epoch's shards at most, with the next one's
