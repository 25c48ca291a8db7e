"""The text pipeline end to end on a tiny run: the stdlib-docstring demo in C4 / Pile / Wikipedia /
txt forms, the prep (dedup, a WordPiece tokenizer trained at fit time, packing; in process, as a
corpus this small needs no Ray head: the image run's prep is on real Ray), real 2-rank
DeepSpeed masked language modelling, held-out masked-token accuracy and perplexity, probe and
fine-tuning on the labelled set, report. The shipped text quickstart (pretrained beats random
init on classification and perplexity) is the slow test below."""

import json

import pytest

from pipeline.state import read_state
from tests.pipeline.quickstart_run import quickstart_metrics, tiny_run
from training.metrics import read_eval_metrics

RUN = """
name: tiny_text
modality: text
run_dir: {run_dir}
demo_data: {{out: "${{run_dir}}/raw", max_documents: 200, labelled_per_class: 12, val_per_class: 4, long_document_kb: 32, corrupt: true}}
prep: {{source: "${{demo_data.out}}/corpus", labelled: "${{demo_data.out}}/labelled", seq_len: 32, vocab_size: 300, val_fraction: 0.1}}
pretrain:
  input: {{seq_len: 32}}
  model: {{preset: nano}}
  mask: {{kind: whole_word, ratio: 0.3}}
  batch_size: 4
  steps: 6
  optim: {{lr: 1.0e-3, warmup_steps: 2}}
  checkpoint_every: 3
  log_every: 1
  loader: {{workers: 1, shuffle_buffer: 16}}
evaluate:
  tasks:
    mlm: {{max_sequences: 40}}
    linear_probe: {{epochs: 3, batch_size: 16}}
    finetune: {{epochs: 1, batch_size: 8}}
launch: {{ranks: 2}}
report: {{reconstructions: 2}}
"""


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("text_pipeline"), RUN)


def test_every_stage_finishes_with_mlm_and_tokens_per_second(text_run):
    _, run = text_run
    for stage in ("demo_data", "prep", "pretrain", "finetune", "probe", "report"):
        assert read_state(run, stage).status == "done"
    metrics = read_eval_metrics(run / "evaluate")
    assert metrics["data"]["classes"] == 6
    assert metrics["tasks"]["mlm"]["better"] == {"accuracy": "higher", "perplexity": "lower"}
    for encoder in ("pretrained", "random_init"):
        assert metrics["mlm"][encoder]["perplexity"] > 1.0
        for task in ("linear_probe", "finetune"):
            assert 0.0 <= metrics[task][encoder]["top1"] <= 100.0
    model = json.loads((run / "pretrain" / "export" / "model.json").read_text())
    assert model["objective"] == "mlm" and model["input"]["vocab_size"] > 100
    curve = [json.loads(line) for line in (run / "pretrain" / "metrics.jsonl").open()]
    assert curve[-1]["units_per_s"] == pytest.approx(32 * curve[-1]["samples_per_s"])
    html = (run / "report.html").read_text()
    assert "tokens/s" in html and "whole_word, ratio 0.30: the encoder reads all 32 tokens" in html
    assert "invalid_utf8: 1" in html and "duplicate:" in html
    assert html.count("data:image/png;base64,") == 3  # + the downstream curves


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    return quickstart_metrics(
        "quickstart_text.yaml", tmp_path_factory.mktemp("quickstart_text") / "run"
    )


@pytest.mark.slow
def test_text_quickstart_pretraining_beats_random_init(quickstart):
    for task in ("linear_probe", "finetune"):
        scores = quickstart[task]
        assert scores["pretrained"]["top1"] > scores["random_init"]["top1"], (task, scores)
    mlm = quickstart["mlm"]
    assert mlm["pretrained"]["perplexity"] < mlm["random_init"]["perplexity"], mlm


@pytest.mark.slow  # a second whole tiny run (~1 min)
def test_a_text_mixture_runs_through_the_pipeline(text_run, tmp_path):
    """The tiny run again, pretraining on its corpus (0.7) mixed with another corpus prepared
    with the same tokenizer (0.3): every stage finishes, and the report shows the shares."""
    from data_prep.text.reader import TextPrepConfig, prep_text
    from training.mixture import MixPlan, quotas

    cfg, _ = text_run
    other = tmp_path / "other"
    other.mkdir()
    lines = [json.dumps({"text": f"Another corpus, line {i}: it says {i % 7} things."})
             for i in range(300)]  # fmt: skip
    (other / "part.jsonl").write_text("\n".join(lines) + "\n")
    tokenizer = f"{cfg.prep.out}/tokenizer.json"
    prep_text(TextPrepConfig(source=str(other), out=str(tmp_path / "other_prep"), seq_len=32,
                             tokenizer=tokenizer, splits=["train"]))  # fmt: skip
    mixture = (
        "pretrain:\n  data:\n"
        '    - {{shards: "${{prep.out}}/train", weight: 0.7}}\n'
        f"    - {{{{shards: {tmp_path / 'other_prep' / 'train'}, weight: 0.3}}}}\n"
    )
    # the run's own prep reuses that tokenizer too (a WordPiece trained again differs: the
    # mixture would be refused, data[1] naming the tokenizer.json that differs)
    template = RUN.replace("pretrain:\n", mixture, 1).replace(
        "val_fraction: 0.1}}", f"val_fraction: 0.1, tokenizer: {tokenizer}}}}}", 1
    )
    (tmp_path / "mixed").mkdir()
    _, run = tiny_run(tmp_path / "mixed", template)
    for stage in ("prep", "pretrain", "finetune", "probe", "report"):
        assert read_state(run, stage).status == "done"
    rows = [json.loads(line) for line in (run / "pretrain" / "metrics.jsonl").open()]
    last = [r for r in rows if "mixture" in r][-1]
    drawn = MixPlan(quotas([0.7, 0.3]), seed=0).position(last["step"] * 2 * 4)  # 2 ranks x 4
    assert list(last["mixture"].values()) == pytest.approx([n / sum(drawn) for n in drawn])
    assert "realised share" in (run / "report.html").read_text()
