import dataclasses

import pytest
import torch

from training.config import ModelConfig
from training.modalities.image.bundle import ImageInputConfig, geometry
from training.modalities.image.patches import patchify
from training.objectives.mae.masking import (
    Mask,
    hard_patch_mask,
    hard_share,
    make_masks,
    masked_ids,
    masks_for_batch,
)
from training.objectives.mae.model import MaskedAutoencoder as _MAE
from training.objectives.mae.model import loss_ranking_loss, reconstruction_loss
from training.transformer import attend

CFG = ModelConfig(
    preset="nano",
    decoder_embed_dim=32,
    decoder_depth=1,
    decoder_num_heads=2,
)
GEOMETRY = geometry(ImageInputConfig(image_size=32, patch_size=4))  # 8 x 8 patches of 48 values
NUM_PATCHES = GEOMETRY.num_tokens


class MaskedAutoencoder(_MAE):
    """The model on 32 x 32 images, patchified as the image modality does."""

    def __init__(self, cfg):
        super().__init__(cfg, GEOMETRY)

    def forward(self, images, mask):
        return super().forward(patchify(images, 4), mask)

    def reconstruct(self, images, mask):
        return super().reconstruct(patchify(images, 4), mask)


def test_encoder_sees_only_visible_patches():
    model = MaskedAutoencoder(CFG)
    seen = []
    model.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    images = torch.randn(4, 3, 32, 32)
    for ratio in (0.0, 0.75, 0.9):
        model(images, masks_for_batch(0, 0, list("abcd"), NUM_PATCHES, ratio))
    assert seen == [1 + 64, 1 + 16, 1 + 6]  # cls + visible patches


def test_prediction_covers_every_patch():
    model = MaskedAutoencoder(CFG)
    mask = masks_for_batch(0, 0, ["a", "b"], 64, 0.75)
    loss, pred = model.reconstruct(torch.randn(2, 3, 32, 32), mask)
    assert pred.shape == (2, 64, 4 * 4 * 3)
    assert loss.ndim == 0 and torch.isfinite(loss)


def mae_reference_loss(pred, target, norm_pix):
    """The MAE repo's ``forward_loss`` with every given patch masked."""
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    return (pred - target).pow(2).mean(dim=-1).mean()


def test_loss_matches_the_mae_reference():
    torch.manual_seed(0)
    pred = torch.randn(2, 10, 48)
    target = torch.rand(2, 10, 48) * 3 + 1
    target[0, 0] = 0.5  # a flat patch: eps decides its normalisation
    for norm_pix in (False, True):
        torch.testing.assert_close(
            reconstruction_loss(pred, target, norm_pix), mae_reference_loss(pred, target, norm_pix)
        )
    bf = reconstruction_loss(pred.bfloat16(), target.bfloat16(), True)
    assert bf.dtype == torch.float32  # the loss is taken in fp32 whatever the model's dtype
    torch.testing.assert_close(bf, mae_reference_loss(pred, target, True), atol=2e-2, rtol=1e-2)


def test_norm_pix_target_is_scale_invariant_per_patch():
    target = torch.randn(1, 4, 12)
    pred = torch.randn(1, 4, 12)
    a = reconstruction_loss(pred, target, True)
    b = reconstruction_loss(pred, target * 5 + 3, True)
    assert torch.allclose(a, b, atol=1e-4)


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = MaskedAutoencoder(CFG)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randn(8, 3, 32, 32)
    mask = masks_for_batch(0, 0, list("abcdefgh"), 64, 0.75)
    first = None
    for _ in range(30):
        loss = model(images, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.8 * first


def test_matmul_attention_matches_fused_attention():
    q, k, v = (torch.randn(2, 3, 17, 8) for _ in range(3))
    torch.testing.assert_close(
        attend(q, k, v, "matmul"), attend(q, k, v, "sdpa"), atol=1e-5, rtol=1e-5
    )
    bf = [t.bfloat16() for t in (q, k, v)]
    torch.testing.assert_close(
        attend(*bf, "matmul").float(), attend(q, k, v, "sdpa"), atol=3e-2, rtol=3e-2
    )


def test_bf16_loss_is_close_to_fp32_on_the_same_batch():
    torch.manual_seed(0)
    model = MaskedAutoencoder(CFG)
    images = torch.randn(8, 3, 32, 32)
    mask = masks_for_batch(0, 0, list("abcdefgh"), NUM_PATCHES, 0.75)
    fp32 = model(images, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = model(images, mask)
    bf16 = model.to(torch.bfloat16)(images.bfloat16(), mask)  # how DeepSpeed's bf16 runs it
    assert abs(autocast.item() - fp32.item()) < 0.02 * fp32.item()
    assert abs(bf16.item() - fp32.item()) < 0.02 * fp32.item()


def test_decoder_reconstructs_a_fraction_of_masked_patches_while_training():
    cfg = dataclasses.replace(CFG, decoder_predict_fraction=0.25)
    model = MaskedAutoencoder(cfg)
    mask = masks_for_batch(0, 0, ["a", "b"], 64, 0.75)  # 48 masked
    seen = []
    model.decoder.pred.register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    _, pred = model.reconstruct(torch.randn(2, 3, 32, 32), mask)
    model.eval()
    _, pred_eval = model.reconstruct(torch.randn(2, 3, 32, 32), mask)
    assert seen == [12, 48]
    assert int((pred.abs().sum(-1) > 0).sum(1)[0]) == 12
    assert ((pred_eval.abs().sum(-1) > 0).float() == mask.masked).all()  # eval: every masked patch


def test_masked_ids_are_masked_distinct_and_reproducible():
    mask = masks_for_batch(3, 7, ["a", "b"], 64, 0.75)
    ids = masked_ids(mask, 0.5)
    assert ids.shape == (2, 24)
    for row in range(2):
        assert set(ids[row].tolist()).isdisjoint(mask.ids_keep[row].tolist())
        assert len(set(ids[row].tolist())) == 24
        assert mask.masked[row, ids[row]].eq(1).all()
    assert torch.equal(ids, masked_ids(masks_for_batch(3, 7, ["a", "b"], 64, 0.75), 0.5))
    assert torch.equal(masked_ids(mask).sort(1).values, mask.masked.nonzero()[:, 1].view(2, 48))
    nothing_masked = masks_for_batch(3, 7, ["a", "b"], 64, 0.0)
    assert torch.equal(masked_ids(nothing_masked), nothing_masked.ids_keep)


def test_cross_decoder_never_lets_mask_tokens_see_each_other():
    cfg = dataclasses.replace(CFG, decoder_type="cross")
    model = MaskedAutoencoder(cfg).eval()
    mask = masks_for_batch(0, 0, ["a"], 64, 0.75)
    latent = model.encoder(torch.randn(1, 64, 48), mask.ids_keep)
    ids = masked_ids(mask)
    together = model.decoder(latent, mask.ids_keep, ids)
    alone = torch.cat(
        [model.decoder(latent, mask.ids_keep, ids[:, i : i + 1]) for i in range(48)], 1
    )
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    selfdec = MaskedAutoencoder(CFG).eval()
    latent = selfdec.encoder(torch.randn(1, 64, 48), mask.ids_keep)
    a = selfdec.decoder(latent, mask.ids_keep, ids)[:, :1]
    b = selfdec.decoder(latent, mask.ids_keep, ids[:, :1])
    assert not torch.allclose(a, b, atol=1e-4)  # MAE's decoder: mask tokens attend to each other


def test_k_masks_per_sample_average_the_losses_of_the_k_views():
    """data2vec 2.0's multi-mask: one decoded sample, K masks, one step; the loss is the mean
    over the views (each hides the same count), the encoder running on each view's tokens."""
    torch.manual_seed(0)
    model = _MAE(CFG, GEOMETRY)
    tokens = torch.randn(3, 64, 48)
    views = make_masks("random", 0, 0, list("abc"), GEOMETRY, 0.75, per_sample=4)
    seen = []
    model.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[:2]))
    together = model(tokens, views)
    assert seen == [(12, 1 + 16)]
    one_each = [
        model(tokens, Mask(*(t[k::4] for t in (views.ids_keep, views.ids_restore, views.masked))))
        for k in range(4)
    ]
    torch.testing.assert_close(together, torch.stack(one_each).mean(), atol=1e-5, rtol=1e-5)


def test_the_loss_ranking_objective_rewards_the_right_order_only():
    actual = torch.tensor([[0.1, 0.5, 0.9, 0.9]])
    right = loss_ranking_loss(torch.tensor([[-5.0, 0.0, 5.0, 5.0]]), actual)
    wrong = loss_ranking_loss(torch.tensor([[5.0, 0.0, -5.0, -5.0]]), actual)
    assert right < 0.01 < 4 < wrong  # the tied pair (0.9, 0.9) counts neither way
    scaled = loss_ranking_loss(torch.tensor([[-5.0, 0.0, 5.0, 5.0]]), actual * 100)
    torch.testing.assert_close(right, scaled)  # the order, not the scale


@pytest.mark.slow  # ~15 s of training; HPM's masking and loss have fast tests above
def test_hpm_learns_which_tokens_are_hard_and_masks_them():
    """Noise in the left half of every image (unpredictable), a flat colour in the right:
    after training, the loss head scores the left half higher, so HPM's masks hide it first,
    while MAE's random masks hide both halves alike."""
    torch.manual_seed(0)
    g = geometry(ImageInputConfig(image_size=16, patch_size=4))  # 4 x 4 tokens
    model = _MAE(CFG, g, predict_loss=True)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    left = (torch.arange(16) % 4 < 2).float()  # token columns 0-1

    def batch(step):
        x = torch.rand(16, 16, 48) * 0.1 + torch.rand(16, 1, 1)
        return x + torch.randn(16, 16, 48) * left.view(1, 16, 1)

    keys = [str(i) for i in range(16)]
    for step in range(150):
        draw = make_masks("hpm", 0, step, keys, g, 0.5, share=hard_share(0.5, step / 150))
        loss = model(batch(step), draw)
        opt.zero_grad()
        loss.backward()
        opt.step()
    scores = model.predicted_loss(batch(999))
    assert (scores[:, left.bool()].mean(1) > scores[:, ~left.bool()].mean(1)).all()
    hpm = hard_patch_mask(make_masks("hpm", 0, 999, keys, g, 0.5, share=0.5), scores)
    rnd = make_masks("random", 0, 999, keys, g, 0.5)
    assert left[scores.topk(4, dim=1).indices].mean() > 0.9  # HPM's 4 hard picks: the noise
    # 4 forced left + 4 at random from 4 left and 8 right: 2/3 of the hidden on the left
    assert (hpm.masked * left).sum() / hpm.masked.sum() > 0.6
    assert abs(float((rnd.masked * left).sum() / rnd.masked.sum()) - 0.5) < 0.15
    assert model.loss_head.weight.grad is not None


def test_an_hpm_model_exports_without_its_loss_head(tmp_path):
    from training.export import load_model, write_export
    from training.export_format import ExportInfo
    from training.modalities.image.bundle import ImageInputConfig as Input

    model = _MAE(CFG, GEOMETRY, predict_loss=True)
    export = ExportInfo("image", "mae", Input(image_size=32, patch_size=4), CFG, {})
    write_export(model.state_dict(), tmp_path, export)
    loaded = load_model(tmp_path)
    assert loaded.loss_head is None
    torch.testing.assert_close(loaded.encoder.patch_embed.weight, model.encoder.patch_embed.weight)
