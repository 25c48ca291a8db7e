"""The benchmarks run end to end on tiny settings and write what they promise (no timings are
checked: benchmarks report, they never pass or fail on speed)."""

import json
import shutil
import subprocess
import sys

import pytest

from benchmarks import (
    attention_kernels,
    audio_data,
    finetune_step,
    mask_ratio_step,
    pretrain_vs_hf,
    video_data,
)


def test_mask_ratio_step_writes_rows_with_bounds(tmp_path):
    args = ["--preset", "nano", "--image-size", "32", "--patch-size", "8", "--batch", "2", "--decoder-depth", "1",
            "--rounds", "1", "--out", str(tmp_path)]  # fmt: skip
    assert mask_ratio_step.main(args) == 0
    (result,) = tmp_path.glob("*.json")
    rows = json.loads(result.read_text())["rows"]
    assert [r["ratio"] for r in rows] == [0.0, 0.75, 0.9]
    assert rows[0]["flop_bound"] == 1.0 and rows[2]["flop_bound"] > rows[1]["flop_bound"] > 1.0
    assert all(r["mfu"] > 0 for r in rows)


def test_finetune_step_times_both_and_projects_the_recipe(tmp_path):
    pytest.importorskip("transformers", reason="transformers is the bench extra")
    args = ["--preset", "nano", "--image-size", "32", "--patch-size", "8", "--batch", "2",
            "--rounds", "1", "--out", str(tmp_path)]  # fmt: skip
    assert finetune_step.main(args) == 0
    result = json.loads((tmp_path / "finetune_step.json").read_text())
    assert set(result["step_s"]) == {"maskmill", "hf"} and result["mfu"] > 0
    # 100 epochs x 1,281,167 images x the step's FLOPs per image
    per_image = result["step_flops"] / 2
    assert result["recipe_flops"] == pytest.approx(per_image * 1_281_167 * 100)
    hours = result["gpu_hours_at_this_mfu"]
    assert hours["A100 (312 TFLOP/s)"] > hours["H100 SXM (989 TFLOP/s)"] > 0


def test_finetune_step_flops_match_torchs_counter():
    """The FLOPs the projection divides by are what torch counts for the same forward."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from training.config import ModelConfig
    from training.modalities.image.bundle import ImageInputConfig, geometry
    from training.objectives.mae.model import ViTEncoder
    from training.tasks.finetune import Classifier

    # two explicit products for attention: torch's counter does not see into the fused CPU kernel
    cfg = ModelConfig(preset="nano", embed_dim=32, depth=2, num_heads=2, attention="matmul")
    g = geometry(ImageInputConfig(32, 8))
    model = Classifier(ViTEncoder(cfg, g), finetune_step.CLASSES)
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(3, g.num_tokens, g.values_per_token))
    expected = finetune_step.step_flops(cfg, g.num_tokens, g.values_per_token, 3) / 3
    assert counter.get_total_flops() == pytest.approx(expected, rel=1e-6)


def test_attention_kernels_writes_both_kernels(tmp_path):
    assert attention_kernels.main(["--batch", "1", "--rounds", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "attention_kernels.json").read_text())["rows"]
    assert {(r["dtype"], r["shape"].split(",")[0]) for r in rows} == {
        ("bf16", "encoder"),
        ("fp32", "encoder"),
        ("bf16", "decoder"),
        ("fp32", "decoder"),
    }


@pytest.mark.slow  # ~15 s; the step it times trains in tests/training
def test_pretrain_vs_hf_compares_both_kernels_of_hf(tmp_path):
    pytest.importorskip("transformers", reason="the comparison needs the 'bench' extra")
    args = ["--preset", "nano", "--image-size", "32", "--patch-size", "8", "--batch", "2", "--rounds", "1",
            "--ratios", "0.75", "--out", str(tmp_path)]  # fmt: skip
    assert pretrain_vs_hf.main(args) == 0
    rows = json.loads(next(tmp_path.glob("*.json")).read_text())["rows"]
    names = {r["implementation"] for r in rows}
    assert names == {
        "maskmill",
        "HF ViTMAEForPreTraining (sdpa)",
        "HF ViTMAEForPreTraining (eager)",
    }
    hf_best = max(r["images_per_s"] for r in rows if r["implementation"].startswith("HF"))
    assert max(r["vs_hf"] for r in rows if r["implementation"].startswith("HF")) == 1.0
    ours = next(r for r in rows if r["implementation"] == "maskmill")
    assert ours["vs_hf"] == pytest.approx(ours["images_per_s"] / hf_best)


@pytest.mark.slow  # ~15 s; the loader is tested in test_loader
def test_image_loader_compares_before_and_after_on_both_corpora(tmp_path):
    from benchmarks import image_loader

    args = ["--images", "24", "--batches", "1", "--rounds", "1", "--out", str(tmp_path)]
    assert image_loader.main(args) == 0
    results = json.loads((tmp_path / "image_loader.json").read_text())
    assert set(results) == {"demo", "textured"}
    assert all(len(r["before"]) == len(r["after"]) == 1 for r in results.values())
    assert "cores per H100" in (tmp_path / "image_loader.md").read_text()


@pytest.mark.slow  # four 2-rank DeepSpeed launches (~35 s); the ZeRO stages train in test_pretrain_distributed
def test_zero_stages_reports_each_stage_from_both_ranks(tmp_path):
    from benchmarks import zero_stages

    args = ["--shapes", "quickstart", "--stages", "2", "3", "--steps", "1", "--out", str(tmp_path)]
    assert zero_stages.main(args) == 0
    results = json.loads((tmp_path / "zero_stages.json").read_text())
    assert set(results) == {"quickstart/zero2", "quickstart/zero3"}
    assert all([r["rank"] for r in ranks] == [0, 1] for ranks in results.values())


@pytest.mark.slow  # ~12 s; audio prep and loader tested in data_prep/audio
def test_audio_data_measures_prep_loader_and_both_steps(tmp_path):
    if shutil.which("espeak-ng") is None:  # `make test` installs it as root; CI runs as root
        pytest.skip("espeak-ng is not installed (`make install` as root)")
    args = ["--speakers", "2", "--sentences", "3", "--digit-strings", "2", "--batch", "4",
            "--batches", "2", "--rounds", "1", "--out", str(tmp_path)]  # fmt: skip
    assert audio_data.main(args) == 0
    result = json.loads((tmp_path / "audio_data.json").read_text())
    assert result["prep"]["audio_hours"] > 0 and result["prep"]["hours_per_core_hour"] > 0
    assert result["loader_audio_s_per_s"] > 0
    assert set(result["consumes_audio_s_per_s"]) == {"0.8", "0.0"}


@pytest.mark.slow  # ~10 s; clip forms tested in data_prep/video
def test_video_data_measures_clip_forms_baseline_prep_loader_and_both_steps(tmp_path):
    args = ["--videos", "6", "--short-side", "36", "--frame-size", "32", "--clips", "3",
            "--rounds", "1", "--batch", "2", "--batches", "2", "--out", str(tmp_path)]  # fmt: skip
    assert video_data.main(args) == 0
    result = json.loads((tmp_path / "video_data.json").read_text())
    assert set(result["forms"]) == {"mjpeg", "mp4", "npy.zst"}
    assert all(r["clips_per_s"] > 0 and r["bytes_per_clip"] > 0 for r in result["forms"].values())
    assert result["baseline_clips_per_s"] > 0 and result["loader_clips_per_s"] > 0
    assert result["prep"]["clips"] > 0 and set(result["consumes_clips_per_s"]) == {"0.9", "0.0"}


def test_mlm_vs_hf_times_both_kernels_of_hf_and_reports_mfu(tmp_path):
    pytest.importorskip("transformers", reason="the comparison needs the 'bench' extra")
    from benchmarks import mlm_vs_hf

    args = ["--preset", "nano", "--seq-len", "32", "--batch", "2", "--vocab", "300",
            "--rounds", "1", "--out", str(tmp_path)]  # fmt: skip
    assert mlm_vs_hf.main(args) == 0
    results = json.loads(next(tmp_path.glob("*.json")).read_text())["results"]
    assert set(results) == {
        "maskmill",
        "HF BertForMaskedLM (sdpa)",
        "HF BertForMaskedLM (eager)",
    }
    assert all(r["mfu"] > 0 and r["tokens_per_s"] > 0 for r in results.values())


def test_text_prep_counts_the_same_corpus_both_ways(tmp_path, text_demo):
    from benchmarks import text_prep

    args = ["--source", str(text_demo / "corpus"), "--rounds", "1", "--vocab", "300",
            "--out", str(tmp_path)]  # fmt: skip
    assert text_prep.main(args) == 0
    result = json.loads((tmp_path / "source.json").read_text())
    # the plain loop counts copies and no separators; maskmill drops copies, adds one per document
    assert 0.8 * result["plain_tokens"] < result["tokens"] < 1.2 * result["plain_tokens"]


@pytest.mark.slow  # ~7 s; sha256 checks tested in test_loader
def test_shard_integrity_times_the_loader_with_sha256_on_and_off(tmp_path):
    from benchmarks import shard_integrity

    args = ["--images", "24", "--batches", "1", "--rounds", "1", "--out", str(tmp_path)]
    assert shard_integrity.main(args) == 0
    results = json.loads((tmp_path / "shard_integrity.json").read_text())
    assert {k: len(v) for k, v in results["images_per_cpu_s"].items()} == {"off": 1, "on": 1}
    assert (
        results["sha256_mb_per_s"] > 0 and "vs off" in (tmp_path / "shard_integrity.md").read_text()
    )


@pytest.mark.slow  # ~15 s; the mask kinds are tested in objectives/mae
def test_masking_frontier_trains_each_point_for_the_budget_and_names_a_verdict(tmp_path):
    from benchmarks import masking_frontier

    args = ["--grid", "tiny", "--budget-s", "2", "--seeds", "2", "--probe-epochs", "3",
            "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]  # fmt: skip
    assert masking_frontier.main(args) == 0
    result = json.loads((tmp_path / "out" / "masking_frontier.json").read_text())
    summary = result["summary"]
    assert list(summary) == ["mae_default", "r0.90_k2", "hpm"]
    for name, runs in result["runs"].items():
        assert len(runs) == 2, name  # two seeds
        for run in runs:  # a probe at half the budget and at its end, after the clock passed it
            assert [p["train_s"] >= at * 2 for p, at in zip(run["probes"], (0.5, 1.0))] == [
                True,
                True,
            ]
    k2 = summary["r0.90_k2"]
    assert k2["views_per_s"] == pytest.approx(2 * k2["images_per_s"])
    assert summary["mae_default"]["relative_flops"] == 1.0 < summary["hpm"]["relative_flops"]
    verdict = result["verdict"]
    assert verdict["reached"] is not None or verdict["closest"]["name"] in summary
    md = (tmp_path / "out" / "masking_frontier.md").read_text()
    assert ("Fastest to reach" in md) != ("No configuration reached" in md)
    assert (tmp_path / "out" / "masking_frontier.png").stat().st_size > 10_000
    again = tmp_path / "again"  # the saved runs re-summarised without training
    assert masking_frontier.main(["--replot", str(tmp_path / "out" / "masking_frontier.json"),
                                  "--out", str(again)]) == 0  # fmt: skip
    assert json.loads((again / "masking_frontier.json").read_text())["summary"] == summary


def test_gpu_check_says_there_is_no_gpu_and_measures_nothing(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no CUDA device is visible" in proc.stdout
    assert json.loads(out.read_text())["gpu"] is None


@pytest.mark.slow  # ~1 min: the GPU check's steps on the CPU at toy sizes (no GPU is lent here)
def test_gpu_check_runs_every_part_on_the_cpu_at_toy_sizes(tmp_path):
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--allow-cpu", "--tiny", "--no-compile",
           "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["nccl"]["ok"] and got["bf16_matmul_peak_tflops"] > 0
    for part, rate in (("mae_eager", "images_per_s"), ("finetune", "images_per_s"),
                       ("mlm", "sequences_per_s"), ("loader", "images_per_s")):  # fmt: skip
        assert got[part].get(rate, 0) > 0, got[part]


@pytest.mark.slow  # ~25 s: 4 gloo ranks spawned twice
def test_cluster_scale_reads_each_share_once_and_merges_the_knn(tmp_path):
    from benchmarks import cluster_scale

    args = ["--samples", "2000", "--val", "200", "--shards", "3", "--world", "4", "--out",
            str(tmp_path)]  # fmt: skip
    assert cluster_scale.main(args) == 0
    result = json.loads((tmp_path / "cluster_scale.json").read_text())
    share = result["split_bytes"] / 4
    assert all(b <= 1.1 * share for b in result["bytes_per_rank"])
    assert result["read"] == result["distinct"]
    top1 = {w: ranks[0]["top1"] for w, ranks in result["ranks"].items()}
    assert len(set(top1.values())) == 1  # the same k-NN at every world size


@pytest.mark.slow  # ~10 s
def test_mlm_masks_times_every_kind(tmp_path):
    from benchmarks import mlm_masks

    assert mlm_masks.main(["--batch", "8", "--seq-len", "64", "--rounds", "1", "--out",
                           str(tmp_path)]) == 0  # fmt: skip
    ms = json.loads((tmp_path / "mlm_masks.json").read_text())["ms"]
    assert {"maskmill random", "maskmill whole_word", "maskmill span"} <= set(ms)


def test_activation_checkpointing_measures_the_kept_bytes_and_projects_the_batch():
    from benchmarks.activation_checkpointing import (
        GPU_BYTES,
        HEADROOM,
        activation_bytes,
        largest_batch,
    )

    plain, light = activation_bytes("vit_b_image", False), activation_bytes("vit_b_image", True)
    assert 0 < light < plain / 5
    static = 100e6 * (2 + 2 + 12 / 8)
    assert largest_batch(int(100e6), plain) == int((HEADROOM * GPU_BYTES - static) // plain)


def test_prep_scale_projects_from_marginal_figures():
    from benchmarks.prep_scale import C4_TOKENS, LIBRILIGHT_SECONDS, TARGET_CPUS, marginal, project

    runs = [{"n": 1000, "driver_cpu_s": 2.0, "wall_s": 7.0, "tokens": 12_000},
            {"n": 11000, "driver_cpu_s": 2.5, "wall_s": 9.0, "tokens": 132_000}]  # fmt: skip
    assert marginal(runs, "driver_cpu_s") == 0.5 / 10000
    costs = {"image": 0.004, "text": 1.5e-6}  # CPU seconds an image, a token
    lines = project({"image": runs, "text": runs}, costs)
    assert len(lines) == 3  # the corpora of the modalities measured alone
    assert lines[0].startswith("| ImageNet-1k | 1,281,167 | 4.00 ms x 1,281,167 / 640")
    assert "50 µs x 1,281,167 = 1.1 min" in lines[0]
    tasks = 1.5e-6 * C4_TOKENS / TARGET_CPUS / 60
    assert f"1.50 µs x 1.56e+11 tokens / 640 = {tasks:.1f} min" in lines[2]
    assert "50.0 µs x 365,000,000 = 304.2 min" in lines[2]  # the driver's serial share
    falling = [runs[0], {**runs[1], "driver_cpu_s": 1.5}]  # noise: a negative marginal
    assert "0.0 µs x 365,000,000 = 0.0 min" in project({"image": runs, "text": falling}, costs)[2]
    # audio by the second of audio: 1 ms a second of LibriLight's 60 k hours
    (audio,) = project({"audio": runs}, {"audio": 1e-3 * LIBRILIGHT_SECONDS / 219_000})
    assert audio.startswith(
        "| LibriLight | 219,000 | 1.00 ms x 2.16e+08 s of audio / 640 = 5.6 min"
    )


@pytest.mark.slow  # ~2 min: twelve real preps on local Ray
def test_prep_scale_runs_at_three_small_sizes():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.prep_scale", "--sizes", "100", "200",
                           "400"], capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| ImageNet-1k | 1,281,167 |" in proc.stdout and "driver peak RSS grows" in proc.stdout
    assert "| LibriLight | 219,000 |" in proc.stdout and "| Kinetics-400 | 260,000 |" in proc.stdout
