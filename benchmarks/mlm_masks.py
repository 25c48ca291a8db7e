"""What drawing MLM masks costs per batch: maskmill's three kinds against HF transformers' data
collators, on the same 128 x 512 batch of WordPiece ids, one run.

    python -m benchmarks.mlm_masks [--batch 128] [--seq-len 512] [--ratio 0.15] [--rounds 5]

maskmill: ``training.objectives.mlm.masking.mlm_batch`` (the chosen tokens and BERT's 80/10/10,
one generator per sample seeded by (seed, step, key), every row of the batch at once in numpy).
HF: ``DataCollatorForLanguageModeling`` (random tokens) and its whole-word masking
(``DataCollatorForWholeWordMask`` in transformers 4, ``whole_word_mask=True`` in 5: words found
from the tokens' ``##`` prefixes), each given the same ids; HF has no span masking. Before vectorising (the loop over words in Python), maskmill took 18.5 ms (random),
110 ms (whole words) and 1.1 s (spans) per batch on this machine kind: the target is 10 ms.
Medians of ``--rounds`` interleaved calls, on one thread.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import interleaved, machine, median, write_results
from training.objectives.mlm.masking import NUM_SPECIAL, mlm_batch

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def ids_and_starts(batch: int, seq_len: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random WordPiece-like ids: a quarter of the pieces continue a word (odd ids are ``##``
    pieces in the vocabulary below), [CLS] first and [SEP] last."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(NUM_SPECIAL, vocab, (batch, seq_len), generator=gen)
    cont = torch.rand(batch, seq_len, generator=gen) < 0.25
    ids = torch.where(cont, ids | 1, ids & ~1).clamp(NUM_SPECIAL, vocab - 1)
    ids[:, 0], ids[:, -1] = 2, 3
    starts = (ids % 2 == 0).long()
    starts[:, 0] = starts[:, -1] = 1
    return ids, starts


def offsets(starts: list[int]) -> list[tuple[int, int]]:
    """Character offsets of one-character tokens, a space before each word's first piece."""
    out, at = [], 0
    for first in starts:
        at += 1 if first else 0
        out.append((at, at + 1))
        at += 1
    return out


def hf_collators(vocab: int, ratio: float, folder: Path):
    import transformers
    from transformers import BertTokenizerFast, DataCollatorForLanguageModeling

    pieces = [f"##w{i}" if i % 2 else f"w{i}" for i in range(NUM_SPECIAL, vocab)]
    (folder / "vocab.txt").write_text("\n".join(SPECIALS + pieces) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    random = DataCollatorForLanguageModeling(tokenizer, mlm_probability=ratio, return_tensors="pt")
    if hasattr(transformers, "DataCollatorForWholeWordMask"):  # transformers 4
        whole = transformers.DataCollatorForWholeWordMask(
            tokenizer, mlm_probability=ratio, return_tensors="pt"
        )
    else:  # transformers 5: a flag of the one collator
        whole = DataCollatorForLanguageModeling(
            tokenizer, mlm_probability=ratio, whole_word_mask=True, return_tensors="pt"
        )
    return random, whole


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--ratio", type=float, default=0.15)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ids, starts = ids_and_starts(args.batch, args.seq_len, args.vocab)
    x = torch.stack([ids, starts], dim=1)
    keys = [f"s{i}" for i in range(args.batch)]
    runs = {
        f"maskmill {kind}": (
            lambda i, kind=kind: mlm_batch(kind, 0, i, keys, x, args.ratio, args.vocab)
        )
        for kind in ("random", "whole_word", "span")
    }
    with tempfile.TemporaryDirectory() as tmp:
        try:
            random, whole = hf_collators(args.vocab, args.ratio, Path(tmp))
        except ImportError:
            random = whole = None
        examples = [{"input_ids": row.tolist()} for row in ids]
        worded = [
            {"input_ids": row.tolist(), "offset_mapping": offsets(first.tolist())}
            for row, first in zip(ids, starts)
        ]  # transformers 5 finds words from character offsets: a gap starts a word
        if random is not None:
            runs["HF DataCollatorForLanguageModeling"] = lambda i: random(examples)
            runs["HF DataCollatorForWholeWordMask"] = lambda i: whole(worded)
        times = interleaved(runs, args.rounds)
    ms = {name: 1000 * median(t) for name, t in times.items()}
    lines = [
        f"# MLM masks: ms per {args.batch} x {args.seq_len} batch (ratio {args.ratio}, one "
        "thread, medians)",
        "",
        "| masks | ms per batch | target 10 ms |",
        "|---|---:|---|",
        *(f"| {name} | {v:.1f} | {'met' if v <= 10 else 'over'} |" for name, v in ms.items()),
    ]
    if "HF DataCollatorForWholeWordMask" in ms:
        lines += [
            "",
            f"Whole words: HF / maskmill = "
            f"{ms['HF DataCollatorForWholeWordMask'] / ms['maskmill whole_word']:.1f}x; random: "
            f"HF / maskmill = "
            f"{ms['HF DataCollatorForLanguageModeling'] / ms['maskmill random']:.1f}x.",
        ]
    lines += ["", f"Machine: {machine()['cpu']}."]
    md = write_results(args.out, "mlm_masks", {"ms": ms, "machine": machine()}, lines)
    sys.stdout.write("\n".join(lines) + f"\n\n(written to {md})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
