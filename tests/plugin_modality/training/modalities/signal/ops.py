"""What the signal modality does to data: decode a sample, cut a batch into patches, its tasks
and its report figure."""

from __future__ import annotations

import numpy as np
import torch

from training.modalities import Example, ModalityOps
from training.tasks.probe import Knn, LinearProbe


def decode(cfg, sample: dict, rng) -> Example:
    wave = torch.from_numpy(np.frombuffer(sample["npy"], dtype=np.float32)[: cfg.length].copy())
    return Example(wave, int(sample.get("cls", -1)), sample["__key__"])


def tokenize(cfg, x: torch.Tensor) -> torch.Tensor:
    return x.float().reshape(x.shape[0], cfg.length // cfg.patch, cfg.patch)


def reconstruction_figure(cfg, model, x, mask, title: str):
    from matplotlib.figure import Figure

    from training.modalities.figures import masked_and_reconstructed

    tokens = tokenize(cfg, x)
    _, rebuilt = masked_and_reconstructed(model, tokens, mask, fill=0.0)
    fig = Figure(figsize=(8, 1.5 * len(x)))
    for i, ax in enumerate(fig.subplots(len(x), 1, squeeze=False)[:, 0]):
        ax.plot(tokens[i].flatten(), label="original")
        ax.plot(rebuilt[i].flatten(), label="reconstruction")
    fig.suptitle(title)
    return fig


OPS = ModalityOps(
    decode=decode,
    tokenize=tokenize,
    tasks=lambda cfg: [LinearProbe(cfg.linear_probe), Knn(cfg.knn)],
    reconstruction_figure=reconstruction_figure,
)
