"""maskmill's MLM training step against HF transformers' ``BertForMaskedLM``, same shape and batch.

    python -m benchmarks.mlm_vs_hf [--preset base] [--seq-len 128] [--batch 8] [--vocab 30522]
        [--ratio 0.15] [--rounds 3] [--out results/mlm_vs_hf]

Needs ``pip install transformers`` (the ``bench`` extra); it is not a runtime dependency.

One full step (forward, backward, AdamW) of each, interleaved in one process on the same ids and
the same chosen tokens (80/10/10 already applied). maskmill runs bf16 as its trainer does under
DeepSpeed (bf16 parameters, fp32 master weights in a fused AdamW); HF runs bf16 autocast over fp32
weights (its Trainer's ``bf16=True``) with both of its attention kernels. Both are BERT-shaped:
``preset`` layers and width, MLP 4x, a head tied to the embeddings. Differences that stay: BERT
has learned positions, token types and post-norm blocks; maskmill has fixed sin-cos positions,
pre-norm blocks and a cls token in front; HF's head projects every position onto the
vocabulary, maskmill's only the chosen ones.

Prints tokens/s, the ratio to HF's faster kernel, and MFU: the model FLOPs of the step
(``training.flops.mlm_step_flops``: encoder on every token, head on the chosen ones, forward +
backward) per second over the bf16 matrix-product peak measured in the same run. HF is charged
the same FLOPs: the useful work, not the extra vocabulary projections it does.
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.common import interleaved, machine, matmul_peak, median, write_results
from benchmarks.pretrain_vs_hf import MasterWeights
from training.config import ModelConfig
from training.flops import mlm_forward_flops
from training.modalities import TokenGeometry
from training.objectives.mlm.masking import mlm_batch
from training.objectives.mlm.model import MaskedLanguageModel


def _batch(batch: int, seq_len: int, vocab: int, ratio: float):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (batch, seq_len), generator=gen)
    starts = torch.ones_like(ids)
    x = torch.stack([ids, starts], dim=1)
    return mlm_batch("random", 0, 0, [f"s{i}" for i in range(batch)], x, ratio, vocab)


def maskmill_step(cfg: ModelConfig, g: TokenGeometry, data):
    torch.manual_seed(0)
    model = MaskedLanguageModel(cfg, g).train().to(torch.bfloat16)
    opt = MasterWeights(model, 1e-4)

    def step(i: int) -> None:
        opt.step(model(data.inputs, data.targets))

    return step


def hf_step(cfg: ModelConfig, g: TokenGeometry, data, attn: str):
    from transformers import BertConfig, BertForMaskedLM

    r = cfg.resolved()
    hf_cfg = BertConfig(
        vocab_size=g.vocab_size,
        hidden_size=r.embed_dim,
        num_hidden_layers=r.depth,
        num_attention_heads=r.num_heads,
        intermediate_size=int(r.embed_dim * r.mlp_ratio),
        max_position_embeddings=g.num_tokens,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation=attn,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = BertForMaskedLM(hf_cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    labels = data.targets

    def step(i: int) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=data.inputs, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="base")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--ratio", type=float, default=0.15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="results/mlm_vs_hf")
    args = parser.parse_args(argv)
    cfg = ModelConfig(preset=args.preset)
    g = TokenGeometry((args.seq_len,), 1, vocab_size=args.vocab)
    data = _batch(args.batch, args.seq_len, args.vocab, args.ratio)
    chosen = int(data.chosen.sum())
    flops = 3 * sum(
        mlm_forward_flops(cfg, g, int(row.sum())) for row in data.chosen
    )  # forward + backward, each row's own chosen count
    runs = {
        "maskmill": maskmill_step(cfg, g, data),
        "HF BertForMaskedLM (sdpa)": hf_step(cfg, g, data, "sdpa"),
        "HF BertForMaskedLM (eager)": hf_step(cfg, g, data, "eager"),
    }
    times = interleaved(runs, args.rounds)
    peak = matmul_peak(torch.bfloat16)
    hf_best = min(median(times[k]) for k in runs if k.startswith("HF"))
    tokens = args.batch * args.seq_len
    rows = [
        f"{args.preset}, seq {args.seq_len}, batch {args.batch}, vocab {args.vocab}, "
        f"ratio {args.ratio} ({chosen} chosen), bf16; bf16 matmul peak {peak / 1e9:.0f} GFLOP/s",
        "",
        "| implementation | s/step | tokens/s | vs HF's faster | MFU |",
        "|---|---|---|---|---|",
    ]
    results = {}
    for name, ts in times.items():
        s = median(ts)
        results[name] = {"seconds": s, "tokens_per_s": tokens / s, "mfu": flops / s / peak}
        rows.append(
            f"| {name} | {s:.3f} | {tokens / s:,.0f} | {hf_best / s:.2f}x | "
            f"{100 * flops / s / peak:.1f}% |"
        )
    md = write_results(
        args.out,
        f"{args.preset}_seq{args.seq_len}_b{args.batch}",
        {"args": vars(args), "machine": machine(), "peak_flops": peak, "results": results},
        rows,
    )
    print("\n".join(rows))
    print(f"written {md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
