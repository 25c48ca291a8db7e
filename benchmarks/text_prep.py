"""Text prep throughput per core: maskmill's text reader against a plain loop over the same files
with HF ``tokenizers``.

    python -m benchmarks.text_prep [--source DIR] [--rounds 3] [--out results/text_prep]

Without ``--source`` the demo corpus is written first (the stdlib's docstrings and the language
reference in C4 / Pile / Wikipedia / txt forms, with its 2 MB document). Both sides run on one
core with one tokenizer thread and the same trained tokenizer:

* maskmill: each corpus file's train documents through ``data_prep.text.reader.encode`` and the
  shard writer (read, normalise, skip copies and bad lines, tokenise in batches, pack, uint16 +
  zstd, tar), as one Ray task does;
* plain loop: what a user writes without a tool: open each file by its format, ``json.loads``
  each line, ``tokenizer.encode_batch`` the texts, count the ids (nothing normalised,
  deduplicated, packed or written); and the same loop with ``encode_batch_fast`` (tokenizers
  >= 0.20: no offsets, no word ids), the fastest a user can write. maskmill takes the fast call
  too where the vocabulary gives the word starts (WordPiece), so the second ratio is the cost of
  everything it does besides tokenising.

Prints tokens per second per core and the ratios, all three timed one after the other in each
round. The fit pass (hashing every document, training
the tokenizer) runs once per corpus on the driver and is timed apart.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import io
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, median, write_results
from data_prep.plan import WorkUnit
from data_prep.text.layout import text_files
from data_prep.text.reader import TextItem, TextPrepConfig, encode, fit
from data_prep.text.tokenizer import load_tokenizer
from data_prep.writer import write_unit

PLAIN = ("encode_batch", "encode_batch_fast")
ROWS = {
    "maskmill": "maskmill text prep (read, normalise, dedup, tokenise, pack, zstd, tar)",
    "encode_batch": "plain loop, `encode_batch` (read, tokenise, count)",
    "encode_batch_fast": "plain loop, `encode_batch_fast` (no offsets or word ids)",
}


def plain_loop(files, tokenizer, method: str = "encode_batch") -> int:
    """Tokens of every text in ``files``, read and tokenised the simplest way (``method``:
    ``encode_batch``, or ``encode_batch_fast``, which skips offsets and word ids)."""
    encode_batch = getattr(tokenizer, method)
    import pyarrow.parquet as pq
    import zstandard

    tokens = 0
    for f in files:
        path = f.file
        if f.format == "parquet":
            texts = [t for t in pq.read_table(path, columns=["text"]).column(0).to_pylist() if t]
        elif f.format == "txt":
            texts = [path.read_text(errors="replace")]
        else:
            raw = path.read_bytes()
            if path.name.endswith(".gz"):
                raw = gzip.decompress(raw)
            elif path.name.endswith(".zst"):
                raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
            texts = []
            for line in raw.splitlines():
                try:
                    text = json.loads(line).get("text")
                except (ValueError, AttributeError):
                    continue
                if isinstance(text, str) and text.strip():
                    texts.append(text)
        for i in range(0, len(texts), 256):
            tokens += sum(
                len(e.ids) for e in encode_batch(texts[i : i + 256], add_special_tokens=False)
            )
    return tokens


def maskmill_prep(cfg: TextPrepConfig, state: dict, files, out: Path) -> None:
    """The train split of ``files`` written as the Ray tasks do, one shard per file."""
    for n, f in enumerate(files):
        item = TextItem(f, "train", n)
        write_unit(WorkUnit(n, (item,)), out, functools.partial(encode, cfg, state))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", help="a text corpus folder (default: the demo corpus)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--out", default="results/text_prep")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="text_prep_"))
    source = Path(args.source) if args.source else None
    if source is None:
        from data_prep.text.demo import TextDemoConfig, write_text_demo

        source = write_text_demo(TextDemoConfig(out=str(work / "raw"), corrupt=True)) / "corpus"
    cfg = TextPrepConfig(
        source=str(source), out=str(work / "shards"), seq_len=args.seq_len,
        vocab_size=args.vocab, val_fraction=0.0, splits=["train"],
    )  # fmt: skip
    Path(cfg.out).mkdir(parents=True)
    files = text_files(source)
    start = time.perf_counter()
    state = fit(cfg, [TextItem(f, "train", n) for n, f in enumerate(files)])
    fit_s = time.perf_counter() - start
    tokenizer = load_tokenizer(state["tokenizer"])
    times: dict[str, list[float]] = {"maskmill": [], **{m: [] for m in PLAIN}}
    real_tokens = plain_tokens = 0
    for r in range(args.rounds):  # the three, one after the other, in each round
        out = work / f"round{r}"
        out.mkdir()
        start = time.perf_counter()
        maskmill_prep(cfg, state, files, out)
        times["maskmill"].append(time.perf_counter() - start)
        real_tokens = _real_tokens(out)
        for method in PLAIN:
            start = time.perf_counter()
            plain_tokens = plain_loop(files, tokenizer, method)
            times[method].append(time.perf_counter() - start)
    rate = {k: (real_tokens if k == "maskmill" else plain_tokens) / median(t)
            for k, t in times.items()}  # fmt: skip
    rows = [
        f"{len(files)} files, {real_tokens:,} tokens after dedup (plain loop: {plain_tokens:,}); "
        f"one core, one tokenizer thread; fit pass (hash + tokenizer training) {fit_s:.1f} s",
        "",
        "| | s | tokens/s per core | vs plain `encode_batch` | vs plain `encode_batch_fast` |",
        "|---|---|---|---|---|",
        *(f"| {label} | {median(times[k]):.2f} | {rate[k]:,.0f} | "
          f"{rate[k] / rate['encode_batch']:.2f}x | {rate[k] / rate['encode_batch_fast']:.2f}x |"
          for k, label in ROWS.items()),
    ]  # fmt: skip
    md = write_results(
        args.out,
        "demo" if not args.source else "source",
        {"machine": machine(), "fit_seconds": fit_s, "seconds": times, "tokens": real_tokens,
         "plain_tokens": plain_tokens},
        rows,
    )  # fmt: skip
    print("\n".join(rows))
    print(f"written {md}", file=sys.stderr)
    return 0


def _real_tokens(split_dir: Path) -> int:
    from data_prep.shard_format import read_shard_samples

    return sum(
        json.loads(s["json"])["tokens"]
        for tar in sorted(split_dir.glob("shard-*.tar"))
        for s in read_shard_samples(tar, members=("json",))
    )


if __name__ == "__main__":
    sys.exit(main())
