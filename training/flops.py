"""Model FLOPs of a training step (MAE and MLM), counted from the model config and the modality's token
geometry (pure functions): no modality writes FLOP code of its own.

Matrix products only (the 2·m·n·k of every linear layer and of attention's two products); a
backward pass costs twice its forward. Norms, activations and softmax are left out, as in the
usual MFU accounting. With activation checkpointing (``recompute``) every transformer block's
forward runs again in the backward pass (the embeddings and heads do not): the count is what the
hardware does, so MFU stays honest.
"""

from __future__ import annotations

from training.config import ModelConfig
from training.modalities import TokenGeometry
from training.objectives.mae.masking import visible_count


def block_flops(tokens: int, dim: int, mlp_ratio: float) -> float:
    """Forward FLOPs of one transformer block on ``tokens`` tokens."""
    linear = 2 * tokens * dim * dim * (3 + 1 + 2 * mlp_ratio)  # qkv, proj, mlp in + out
    attention = 2 * 2 * tokens * tokens * dim  # q·kᵀ and attn·v
    return linear + attention


def recomputed_block_flops(tokens: int, dim: int, mlp_ratio: float) -> float:
    """What activation checkpointing runs again of one block in the backward pass: all but the
    MLP's output product, whose result no gradient needs (torch stops the recomputation once it
    has every saved tensor: ``torch.utils.checkpoint``'s early stop)."""
    return block_flops(tokens, dim, mlp_ratio) - 2 * tokens * dim * dim * mlp_ratio


def cross_block_flops(queries: int, context: int, dim: int, mlp_ratio: float) -> float:
    """Forward FLOPs of a cross-attention block: ``queries`` tokens attend to ``context``."""
    linear = 2 * queries * dim * dim * (1 + 1 + 2 * mlp_ratio) + 2 * context * dim * dim * 2
    attention = 2 * 2 * queries * context * dim
    return linear + attention


def predicted_patches(
    cfg: ModelConfig,
    geometry: TokenGeometry,
    ratio: float,
    training: bool = True,
    kind: str = "random",
) -> int:
    """How many masked tokens the decoder reconstructs (see ``masking.masked_ids``)."""
    n = geometry.num_tokens
    hidden = n - visible_count(kind, geometry.grid, ratio)
    if hidden == 0:
        return n  # nothing masked: every patch is a target
    f = cfg.decoder_predict_fraction if training else 1.0
    return hidden if f >= 1.0 else min(hidden, max(1, round(f * hidden)))


def mae_forward_flops(
    cfg: ModelConfig,
    geometry: TokenGeometry,
    ratio: float,
    decoder: bool = True,
    kind: str = "random",
    blocks_only: bool = False,
) -> float:
    """Forward FLOPs of one training sample: the encoder on the visible tokens (+cls); the
    decoder on those plus the mask tokens it reconstructs (MAE's self-attention decoder) or
    with only the mask tokens as queries (cross-attention decoder). ``blocks_only``: the
    transformer blocks' share, as activation checkpointing runs it again
    (:func:`recomputed_block_flops`)."""
    c = cfg.resolved()
    n = geometry.num_tokens
    cls = int(c.cls_token)
    visible = visible_count(kind, geometry.grid, ratio) + cls
    patch_dim = geometry.values_per_token
    block = recomputed_block_flops if blocks_only else block_flops
    encoder_blocks = c.depth * block(visible, c.embed_dim, c.mlp_ratio)
    encoder = (0 if blocks_only else 2 * (visible - cls) * patch_dim * c.embed_dim) + encoder_blocks
    if not decoder:
        return encoder
    d = c.decoder_embed_dim
    targets = predicted_patches(c, geometry, ratio, kind=kind)
    if c.decoder_type == "cross":
        mlp_out = 2 * targets * d * d * c.mlp_ratio if blocks_only else 0  # not recomputed
        blocks = c.decoder_depth * (cross_block_flops(targets, visible, d, c.mlp_ratio) - mlp_out)
    elif visible - cls == n:  # nothing masked: the visible tokens predict themselves
        blocks = c.decoder_depth * block(visible, d, c.mlp_ratio)
    else:
        blocks = c.decoder_depth * block(visible + targets, d, c.mlp_ratio)
    if blocks_only:
        return encoder + blocks
    return encoder + 2 * visible * c.embed_dim * d + blocks + 2 * targets * d * patch_dim


def hpm_scoring_flops(cfg: ModelConfig, geometry: TokenGeometry) -> float:
    """Forward FLOPs of HPM's scoring pass over one unmasked sample (no backward): the encoder
    and decoder on every token, and the loss head (``MaskedAutoencoder.predicted_loss``)."""
    c = cfg.resolved()
    n = geometry.num_tokens
    full = mae_forward_flops(c, geometry, 0.0)  # at ratio 0 every token is visible and predicted
    return (
        full - 2 * n * c.decoder_embed_dim * geometry.values_per_token + 2 * n * c.decoder_embed_dim
    )


def mae_step_flops(
    cfg: ModelConfig,
    geometry: TokenGeometry,
    ratio: float,
    batch: int,
    kind: str = "random",
    per_sample: int = 1,
    recompute: bool = False,
) -> float:
    """Forward + backward FLOPs of a training step on ``batch`` decoded samples, each trained
    under ``per_sample`` masks; HPM adds its scoring pass per sample and its loss head."""
    views = batch * per_sample
    step = 3 * views * mae_forward_flops(cfg, geometry, ratio, kind=kind)  # backward: 2x
    if recompute:  # each block's forward again, in the backward pass
        step += views * mae_forward_flops(cfg, geometry, ratio, kind=kind, blocks_only=True)
    if kind == "hpm":
        d = cfg.resolved().decoder_embed_dim
        step += 3 * views * 2 * predicted_patches(cfg, geometry, ratio, kind=kind) * d
        step += batch * hpm_scoring_flops(cfg, geometry)
    return step


def mlm_forward_flops(cfg: ModelConfig, geometry: TokenGeometry, chosen: int) -> float:
    """Forward FLOPs of one MLM sample: the encoder on every token (+cls; the embedding is a
    lookup, not a product), the head on the ``chosen`` tokens (dense, then the tied vocabulary
    projection). Unlike MAE's, the encoder's share does not fall with the ratio."""
    c = cfg.resolved()
    d = c.embed_dim
    encoder = c.depth * block_flops(geometry.num_tokens + 1, d, c.mlp_ratio)
    return encoder + 2 * chosen * d * d + 2 * chosen * d * geometry.vocab_size


def mlm_step_flops(
    cfg: ModelConfig, geometry: TokenGeometry, ratio: float, batch: int, recompute: bool = False
) -> float:
    """Forward + backward FLOPs of an MLM step on ``batch`` full sequences (``recompute``: with
    activation checkpointing, each encoder block's forward again)."""
    step = 3 * batch * mlm_forward_flops(cfg, geometry, round(ratio * geometry.num_tokens))
    if recompute:
        c = cfg.resolved()
        tokens = geometry.num_tokens + 1
        step += batch * c.depth * recomputed_block_flops(tokens, c.embed_dim, c.mlp_ratio)
    return step
