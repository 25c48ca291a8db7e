"""The real-scale recipes in configs/ are valid from 8 to 512 GPUs: every global batch (the
pretraining's and each training task's) splits evenly over the ranks, within the recipe's most
rows per GPU per forward. Before global batches, the Kinetics fine-tune (16) was refused at 32
ranks, and the audio, CTC and text fine-tunes (32) at 64."""

from pathlib import Path

import pytest

from pipeline.schema import load_run_config
from training.batching import split_batch
from training.config import pretrain_split
from training.typed_config import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECIPES = {
    "imagenet_mae_vitb.yaml": ["prep.source=/data/imagenet"],
    "kinetics400_videomae_vitb.yaml": [],
    "librilight_audiomae_vitb.yaml": [],
    "c4_bert_base.yaml": [],
}
GPUS = [8, 16, 32, 64, 128, 256, 512]  # nodes of 8 GPUs: 1 to 64


def _at(recipe: str, gpus: int, *more: str):
    world = [f"launch.ranks={min(gpus, 8)}", f"launch.nodes={max(1, gpus // 8)}"]
    return load_run_config(CONFIGS / recipe, [*RECIPES[recipe], *world, *more])


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_keeps_its_global_batches_from_8_to_512_gpus(recipe):
    first = _at(recipe, GPUS[0])
    tasks = first.evaluate.tasks
    trained = [
        name
        for name in vars(tasks)
        if getattr(getattr(tasks, name), "enabled", False)
        and hasattr(getattr(tasks, name), "micro_batch")
    ]
    assert trained, "a recipe with no task that trains tests nothing here"
    for gpus in GPUS:
        cfg = _at(recipe, gpus)  # validation refuses a batch that cannot split
        split = pretrain_split(cfg.pretrain, gpus)
        assert split.global_batch == first.pretrain.global_batch
        assert split.micro <= cfg.pretrain.batch_size
        for name in trained:
            task = getattr(cfg.evaluate.tasks, name)
            task_split = split_batch(task.batch_size, gpus, task.micro_batch)
            assert task_split.micro <= (task.micro_batch or task_split.per_rank)


def test_a_world_the_global_batch_cannot_split_names_the_key_and_the_world():
    with pytest.raises(ConfigError) as e:
        _at("imagenet_mae_vitb.yaml", 24, "launch.nodes=3")
    text = str(e.value)
    assert "pretrain.global_batch" in text
    assert "the 24 ranks (launch.nodes 3 x launch.ranks 8)" in text
    assert "4080 or 4104 would be" in text
    assert "evaluate.tasks.finetune.batch_size" in text  # 1024 at 24 ranks: the task too


def test_a_scoring_pass_batch_is_per_rank_and_any_size():
    # the MLM task's batch_size is a per-rank scoring batch: 64 at 512 ranks is fine
    cfg = _at("c4_bert_base.yaml", 512, "evaluate.tasks.mlm.batch_size=64")
    assert cfg.evaluate.tasks.mlm.batch_size == 64


def test_stating_the_global_batch_keeps_a_run_s_fingerprint():
    """A run written per rank (128 x 2 ranks) and the same run stated as a global batch of 256
    are one run: a recorded pretraining stays done, and either resumes on any world it splits
    over."""
    from pipeline.stages import STAGES  # the runner hashes this section with the stage's inputs

    pretrain = next(s for s in STAGES if s.name == "pretrain")
    quickstart = CONFIGS / "quickstart_image.yaml"

    def section(*overrides):
        return pretrain.section(load_run_config(quickstart, list(overrides)))

    per_rank = section()
    assert section("pretrain.global_batch=256") == per_rank
    assert section("pretrain.global_batch=256", "launch.ranks=1", "launch.nodes=2") == per_rank
    assert section("pretrain.global_batch=512") != per_rank


def test_new_task_keys_at_their_defaults_leave_a_finished_fine_tune_done():
    """SpecAugment's shares, the frozen start and the label fraction came after runs were
    recorded: at their defaults (off, the whole split) the finetune stage's section holds no
    trace of them, so a recorded fine-tune stays done; set, they change it."""
    from pipeline.stages import STAGES

    finetune = next(s for s in STAGES if s.name == "finetune")
    audio = CONFIGS / "quickstart_audio.yaml"
    off = ["evaluate.tasks.ctc.mask_time=0.0", "evaluate.tasks.ctc.mask_freq=0.0"]
    plain = finetune.section(load_run_config(audio, off))  # the quickstart's CTC masks, off
    for task, key in (("ctc", "mask_time"), ("ctc", "mask_freq"), ("ctc", "freeze_epochs"),
                      ("finetune", "freeze_epochs"), ("finetune", "label_fraction")):  # fmt: skip
        assert key not in plain["tasks"][task]
    masked = finetune.section(load_run_config(audio, [*off, "evaluate.tasks.ctc.mask_time=0.2"]))
    assert masked != plain and masked["tasks"]["ctc"]["mask_time"] == 0.2
    frozen = finetune.section(
        load_run_config(audio, [*off, "evaluate.tasks.finetune.freeze_epochs=2"])
    )
    assert frozen != plain and frozen["tasks"]["finetune"]["freeze_epochs"] == 2
    few = finetune.section(
        load_run_config(audio, [*off, "evaluate.tasks.finetune.label_fraction=0.1"])
    )
    assert few != plain and few["tasks"]["finetune"]["label_fraction"] == 0.1
