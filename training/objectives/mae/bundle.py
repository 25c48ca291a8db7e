"""The MAE objective's bundle: a visible-only encoder and a light decoder that reconstructs the
masked tokens (``model.py``), masks drawn from the token grid alone (``masking.py``)."""

from __future__ import annotations

import math

from training.objectives import Objective


def build_model(cfg, geometry, mask_kind=None):
    """The MAE; a ``mask_kind`` of ``hpm`` gives it the loss head that ranks tokens."""
    from training.objectives.mae.model import MaskedAutoencoder

    return MaskedAutoencoder(cfg, geometry, predict_loss=mask_kind == "hpm")


def load_published(model, path, accept=()):
    """Start the MAE from a published checkpoint (HF ViTMAE, the MAE repository's, ours)."""
    from training.objectives.mae.published import load_published as load

    return load(model, path, list(accept))


def step_inputs(mask_cfg, seed, step, keys, x, geometry, progress=0.0):
    """A ``Mask`` over the token grid (``per_sample`` rows per sample; HPM's draw, which the
    model completes, with its hard share from the run's ``progress``)."""
    from training.objectives.mae.masking import hard_share, make_masks

    share = hard_share(mask_cfg.hard_share, progress)
    c = mask_cfg
    return make_masks(c.kind, seed, step, keys, geometry, c.ratio, c.per_sample, share)


def loss(engine, modality, input_cfg, x, mask, device, dtype):
    """The modality tokenizes the batch on the device; the model reconstructs what is hidden."""
    tokens = modality.ops.tokenize(input_cfg, x.to(device, non_blocking=True))
    return engine(tokens.to(dtype), mask)


def figure_inputs(mask_cfg, seed, keys, x, geometry):
    """The mask of the report's figure. HPM's masks need the loss head, which the export leaves
    out: its figure masks at random."""
    from training.objectives.mae.masking import MODEL_SCORED_KINDS, make_masks

    kind = "random" if mask_cfg.kind in MODEL_SCORED_KINDS else mask_cfg.kind
    return make_masks(kind, seed, 0, keys, geometry, mask_cfg.ratio)


def head_fact(model_cfg) -> tuple[str, str]:
    return ("decoder", f"{model_cfg.decoder_depth} blocks x {model_cfg.decoder_embed_dim}")


def mask_fact(mask_cfg, grid) -> tuple[str, str]:
    from training.objectives.mae.masking import visible_count

    tokens = math.prod(grid)
    visible = visible_count(mask_cfg.kind, grid, mask_cfg.ratio)
    views = f", {mask_cfg.per_sample} masks per sample" if mask_cfg.per_sample > 1 else ""
    return (
        "mask",
        f"{mask_cfg.kind}, ratio {mask_cfg.ratio:.2f} ({visible} of {tokens} tokens visible)"
        + views,
    )


OBJECTIVE = Objective(
    name="mae",
    build_model=build_model,
    step_inputs=step_inputs,
    loss=loss,
    figure_inputs=figure_inputs,
    head_fact=head_fact,
    mask_fact=mask_fact,
    on_masking_frontier=True,
    load_published=load_published,
)
