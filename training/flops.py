"""Model FLOPs of an MAE training step, counted from the configuration (pure functions).

Matrix products only (the 2·m·n·k of every linear layer and of attention's two products); a
backward pass costs twice its forward. Norms, activations and softmax are left out, as in the
usual MFU accounting.
"""

from __future__ import annotations

from training.config import ModelConfig
from training.masking import num_visible


def block_flops(tokens: int, dim: int, mlp_ratio: float) -> float:
    """Forward FLOPs of one transformer block on ``tokens`` tokens."""
    linear = 2 * tokens * dim * dim * (3 + 1 + 2 * mlp_ratio)  # qkv, proj, mlp in + out
    attention = 2 * 2 * tokens * tokens * dim  # q·kᵀ and attn·v
    return linear + attention


def mae_forward_flops(cfg: ModelConfig, ratio: float, decoder: bool = True) -> float:
    """Forward FLOPs of one sample: encoder on visible patches (+cls), decoder on all."""
    c = cfg.resolved()
    n = c.num_patches
    visible = num_visible(n, ratio) + 1
    patch_dim = c.patch_size**2 * 3
    encoder = 2 * (visible - 1) * patch_dim * c.embed_dim + c.depth * block_flops(
        visible, c.embed_dim, c.mlp_ratio
    )
    if not decoder:
        return encoder
    decoding = (
        2 * visible * c.embed_dim * c.decoder_embed_dim
        + c.decoder_depth * block_flops(n + 1, c.decoder_embed_dim, c.mlp_ratio)
        + 2 * n * c.decoder_embed_dim * patch_dim
    )
    return encoder + decoding


def mae_step_flops(cfg: ModelConfig, ratio: float, batch: int) -> float:
    """Forward + backward FLOPs of a training step on ``batch`` samples."""
    return 3 * batch * mae_forward_flops(cfg, ratio)
