"""The audio pipeline end to end on a tiny run: espeak-ng corpus, the prep (in process: a corpus
this small needs no Ray head; the image run's prep is on real Ray), real 2-rank DeepSpeed AudioMAE pretraining, classification and CTC evaluation, report. The shipped audio
quickstart (pretrained beats random init on the probe and on WER) is the slow test below."""

import json
import shutil

import pytest

from pipeline.state import read_state
from tests.pipeline.quickstart_run import quickstart_metrics, tiny_run
from training.metrics import read_eval_metrics

RUN = """
name: tiny_audio
modality: audio
run_dir: {run_dir}
demo_data: {{out: "${{run_dir}}/raw", speakers: 3, chapters_per_speaker: 2, sentences_per_chapter: 3, held_out_voices: 1, digit_strings: 3, repeats: 2, corrupt: true}}
prep:
  source: ${{demo_data.out}}/librilight
  labelled_train: ${{demo_data.out}}/digits/train
  labelled_val: ${{demo_data.out}}/digits/val
  val_speakers: 0.34
  segment_seconds: 4
  samples_per_shard: 16
pretrain:
  input: {{frames: 128, patch_size: 16}}
  model: {{preset: nano, decoder_embed_dim: 32, decoder_depth: 1, decoder_num_heads: 2}}
  mask: {{kind: time_frequency}}
  batch_size: 8
  steps: 6
  optim: {{lr: 1.0e-3, warmup_steps: 2}}
  checkpoint_every: 3
  log_every: 1
  loader: {{workers: 1, shuffle_buffer: 16}}
evaluate:
  tasks:
    linear_probe: {{epochs: 3, batch_size: 16}}
    knn: {{k: 3}}
    finetune: {{epochs: 1, batch_size: 8}}
    ctc: {{epochs: 1, batch_size: 8}}
launch: {{ranks: 2}}
report: {{reconstructions: 2}}
"""


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory):
    if shutil.which("espeak-ng") is None:  # `make test` installs it as root; CI runs as root
        pytest.skip("espeak-ng is not installed (`make install` as root)")
    return tiny_run(tmp_path_factory.mktemp("audio_pipeline"), RUN)


def test_every_stage_finishes_with_wer_and_seconds_of_audio(audio_run):
    cfg, run = audio_run
    for stage in ("demo_data", "prep", "pretrain", "finetune", "probe", "report"):
        assert read_state(run, stage).status == "done"
    assert cfg.pretrain.mask.ratio == 0.8  # the audio default
    metrics = read_eval_metrics(run / "evaluate")
    assert metrics["tasks"]["ctc"]["better"] == {"wer": "lower", "cer": "lower"}
    for encoder in ("pretrained", "random_init"):
        assert metrics["ctc"][encoder]["wer"] >= 0.0
        assert 0.0 <= metrics["linear_probe"][encoder]["top1"] <= 100.0
    assert metrics["data"]["classes"] == 3  # the digit strings
    model = json.loads((run / "pretrain" / "export" / "model.json").read_text())
    assert model["modality"] == "audio" and model["input"]["mel_std"] > 0  # bound at prep time
    curve = [json.loads(line) for line in (run / "pretrain" / "metrics.jsonl").open()]
    clip = (400 + 127 * 160) / 16000
    assert curve[-1]["units_per_s"] == pytest.approx(curve[-1]["samples_per_s"] * clip)
    html = (run / "report.html").read_text()
    assert "seconds of audio/s" in html and "CTC fine-tune wer" in html
    assert "truncated_audio: 1" in html and "resampled_22050: 1" in html
    # curves, reconstructions, the downstream curves; no masking frontier: none is measured
    # for this modality (the shipped one is the image corpus's)
    assert html.count("data:image/png;base64,") == 3
    assert "No cost-quality frontier has been measured for" in html
    assert "Masking: cost against quality" in html


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    return quickstart_metrics(
        "quickstart_audio.yaml", tmp_path_factory.mktemp("quickstart_audio") / "run"
    )


@pytest.mark.slow
def test_audio_quickstart_pretraining_beats_random_init_on_classification(quickstart):
    for task in ("linear_probe", "finetune"):
        scores = quickstart[task]
        assert scores["pretrained"]["top1"] > scores["random_init"]["top1"], (task, scores)


@pytest.mark.slow
def test_audio_quickstart_pretraining_lowers_wer(quickstart):
    ctc = quickstart["ctc"]
    assert ctc["pretrained"]["wer"] < ctc["random_init"]["wer"], ctc
