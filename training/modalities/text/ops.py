"""What the text modality does to data: decode token-id samples, the downstream tasks, and the
report's table of masked tokens against the model's guesses."""

from __future__ import annotations

import random

import torch

from data_prep.shard_format import npy_zst_array
from training.modalities import Example, ModalityOps
from training.modalities.text.bundle import TextInputConfig, TextTasksConfig
from training.objectives.mlm.scores import MlmEval
from training.tasks.finetune import Finetune
from training.tasks.probe import LinearProbe

MEMBER = "tokens.npy.zst"
PAD = 0


def decode(cfg: TextInputConfig, sample: dict, rng: random.Random | None) -> Example | None:
    """A shard sample -> int64 ``[2, seq_len]`` (ids, word-start flags), cut or padded."""
    try:
        array = npy_zst_array(sample[MEMBER])
    except (KeyError, ValueError):
        return None
    x = torch.from_numpy(array.astype("int64"))[:, : cfg.seq_len]
    if x.shape[1] < cfg.seq_len:
        pad = torch.tensor([[PAD], [1]]).expand(2, cfg.seq_len - x.shape[1])
        x = torch.cat([x, pad], dim=1)
    label = int(sample["cls"]) if "cls" in sample else -1
    return Example(x, label, sample["__key__"])


def tokenize(cfg: TextInputConfig, batch: torch.Tensor) -> torch.Tensor:
    """``[B, 2, N]`` -> the ids ``[B, N]`` (int64) the encoder embeds."""
    return batch[:, 0]


def tasks(cfg: TextTasksConfig) -> list:
    return [MlmEval(cfg.mlm), LinearProbe(cfg.linear_probe), Finetune(cfg.finetune)]


def reconstruction_figure(cfg: TextInputConfig, model, x, batch, title: str, tokenizer=None):
    """A table figure: for each sequence, the text the model read (masked tokens in brackets)
    and its guesses at them, with the originals."""
    from matplotlib.figure import Figure

    guesses = model.reconstruct(batch)
    rows = []
    for i in range(x.shape[0]):
        chosen = batch.chosen[i].nonzero().flatten().tolist()[:12]
        if not chosen:
            continue
        lo, hi = max(0, chosen[0] - 6), min(x.shape[2], chosen[-1] + 6)
        ids = x[i, 0]
        read = [_piece(tokenizer, int(batch.inputs[i, j])) for j in range(lo, hi)]
        shown = [f"[{r}]" if j in chosen else r for j, r in zip(range(lo, hi), read)]
        pairs = [
            f"{_piece(tokenizer, int(ids[j]))}→{_piece(tokenizer, int(guesses[i, j]))}"
            for j in chosen
        ]
        rows.append((" ".join(shown), ", ".join(pairs)))
    height = 0.95 * max(1, len(rows)) + 0.5
    fig = Figure(figsize=(13, height))
    fig.suptitle(
        f"{title}: what the encoder read (chosen tokens in brackets); below, original→guess",
        fontsize=9,
    )
    ax = fig.add_axes((0.01, 0.0, 0.98, 1 - 0.45 / height))
    ax.axis("off")
    for k, (read, pairs) in enumerate(rows):
        y = 1 - (k + 0.5) / max(1, len(rows))
        ax.text(
            0,
            y + 0.02,
            _wrap(read, 150),
            fontsize=7,
            family="monospace",
            va="bottom",
            transform=ax.transAxes,
        )
        ax.text(
            0,
            y - 0.02,
            _wrap(pairs, 150),
            fontsize=7,
            family="monospace",
            va="top",
            color="#1a5fb4",
            transform=ax.transAxes,
        )
    return fig


def figure_context(prepared_root) -> dict:
    """The tokenizer the prep trained beside the splits, to spell the figure's ids."""
    from data_prep.text.tokenizer import TOKENIZER_FILE, load_tokenizer

    return {"tokenizer": load_tokenizer(f"{str(prepared_root).rstrip('/')}/{TOKENIZER_FILE}")}


def _piece(tokenizer, token_id: int) -> str:
    return tokenizer.id_to_token(token_id) if tokenizer is not None else str(token_id)


def _wrap(text: str, width: int) -> str:
    return "\n".join(text[i : i + width] for i in range(0, len(text), width))


OPS = ModalityOps(
    decode=decode,
    tokenize=tokenize,
    tasks=tasks,
    reconstruction_figure=reconstruction_figure,
    figure_context=figure_context,
)
