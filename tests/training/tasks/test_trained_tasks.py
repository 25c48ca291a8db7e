"""Tasks that train the encoder train a copy: a stage runs every task on the same encoder
object, and a CTC run after fine-tuning must start from the pretrained weights, not from the
classifier's. The jobs are stepped plainly here (the stage steps them under DeepSpeed)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import torch

from data_prep.shard_format import read_manifest
from training.config import ModelConfig
from training.evaluate import random_encoder
from training.export_format import ExportInfo
from training.modalities import modality
from training.modalities.audio.bundle import AudioInputConfig, bind_input
from training.modalities.image.bundle import ImageInputConfig
from training.tasks.config import CtcConfig, FinetuneConfig
from training.tasks.ctc import CtcJob
from training.tasks.downstream import Downstream
from training.tasks.finetune import FinetuneJob


def _data(name, input_cfg, shards, classes):
    train, val = modality(name).eval_splits
    return Downstream(
        modality(name), input_cfg, str(shards / train), str(shards / val), classes, 16, 0
    )


def _untouched(make_job, name, input_cfg, shards, classes):
    model = ModelConfig(preset="nano", embed_dim=32, depth=2, num_heads=2)
    encoder = random_encoder(ExportInfo(name, "mae", input_cfg, model, {}), seed=0)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    rates = [b.drop_path for b in encoder.blocks]
    run = SimpleNamespace(rows=lambda batch: (0, batch))  # one rank
    job = make_job(encoder, _data(name, input_cfg, shards, classes), run)
    job.engine = job.module  # plain steps
    opt = torch.optim.SGD(job.module.parameters(), lr=1.0)
    batches = job.batches(0)
    for step in range(2):
        job.loss(next(batches), step, 0).backward()
        opt.step()
    batches.close()  # its loader worker ends here, not at some later test's fork
    assert not all(  # the job's copy did train
        torch.equal(before[k], v) for k, v in job.module.encoder.state_dict().items()
    )
    after = encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [b.drop_path for b in encoder.blocks] == rates


def test_finetune_trains_a_copy_of_the_encoder(prepared):
    cfg = FinetuneConfig(epochs=1, batch_size=16, drop_path=0.1)
    _untouched(
        lambda enc, data, run: FinetuneJob(enc, data, cfg, data.input, run),
        "image", ImageInputConfig(32, 8), prepared, 4,
    )  # fmt: skip


def test_a_low_label_finetune_trains_on_its_seeded_subset_alone(prepared):
    """``label_fraction``: the job's epoch is the subset's size, and its batches hold only the
    subset's samples; the same subset for every encoder of the run (it follows the seed)."""
    data = _data("image", ImageInputConfig(32, 8), prepared, 4)
    model = ModelConfig(preset="nano", embed_dim=32, depth=2, num_heads=2)
    info = ExportInfo("image", "mae", data.input, model, {})
    run = SimpleNamespace(rows=lambda batch: (0, batch))
    cfg = FinetuneConfig(epochs=1, batch_size=4, label_fraction=0.2)
    jobs = [FinetuneJob(random_encoder(info, seed=s), data, cfg, data.input, run) for s in (0, 1)]
    whole = FinetuneJob(random_encoder(info, seed=0), data, FinetuneConfig(), data.input, run)
    assert jobs[0].subset == jobs[1].subset
    assert 0 < jobs[0].samples == sum(map(len, jobs[0].subset)) < whole.samples / 2
    records = read_manifest(data.train_shards)
    starts = list(itertools.accumulate([0, *(r.samples for r in records)]))
    keys = [k for batch in data.eval_batches(data.train_shards) for k in batch[2]]
    want = {keys[starts[i] + o] for i, kept in enumerate(jobs[0].subset) for o in kept}
    batches = jobs[0].batches(0)
    got = [k for batch in itertools.islice(batches, 2 * jobs[0].samples // 4) for k in batch[2]]
    batches.close()
    assert set(got) == want  # two epochs: every subset sample, and nothing else


def test_ctc_trains_a_copy_of_the_encoder(speech_prepared):
    seen = bind_input(AudioInputConfig(frames=256), str(speech_prepared / "train"))
    cfg = CtcConfig(epochs=1, batch_size=8, mask_time=0.2, mask_freq=0.2)  # SpecAugment on
    _untouched(
        lambda enc, data, run: CtcJob(enc, data, cfg, run), "audio", seen, speech_prepared, 3
    )


def test_frozen_passes_reach_the_fused_attention_in_bf16(prepared, monkeypatch):
    """Feature and scoring passes run under bf16 autocast (evaluate.precision), so on a GPU the
    fused kernel and bf16 matrix products serve them; before, they ran in fp32. The encoder is
    built with attention "sdpa" (what CUDA picks), and the kernel's inputs are recorded."""
    import torch.nn.functional as F

    seen = []
    sdpa = F.scaled_dot_product_attention

    def recorded(q, *args, **kwargs):
        seen.append(q.dtype)
        return sdpa(q, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recorded)
    model = ModelConfig(preset="nano", embed_dim=32, depth=2, num_heads=2, attention="sdpa")
    seen_cfg = ImageInputConfig(32, 8)
    encoder = random_encoder(ExportInfo("image", "mae", seen_cfg, model, {}), seed=0).eval()
    data = _data("image", seen_cfg, prepared, 4)
    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        seen.clear()
        data.precision = precision
        with torch.no_grad():
            rows = data.rank_rows(encoder.features, data.val_shards)
        assert seen and set(seen) == {dtype}
        assert rows["out"].dtype == torch.float32  # gathered and scored in fp32
