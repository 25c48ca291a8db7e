import torch

from training.config import ModelConfig
from training.mae import MaskedAutoencoder, reconstruction_loss
from training.masking import masks_for_batch

CFG = ModelConfig(
    preset="nano",
    image_size=32,
    patch_size=4,
    decoder_embed_dim=32,
    decoder_depth=1,
    decoder_num_heads=2,
)


def test_encoder_sees_only_visible_patches():
    model = MaskedAutoencoder(CFG)
    seen = []
    model.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    images = torch.randn(4, 3, 32, 32)
    for ratio in (0.0, 0.75, 0.9):
        model(images, masks_for_batch(0, 0, list("abcd"), CFG.num_patches, ratio))
    assert seen == [1 + 64, 1 + 16, 1 + 6]  # cls + visible patches


def test_prediction_covers_every_patch():
    model = MaskedAutoencoder(CFG)
    loss, pred = model(torch.randn(2, 3, 32, 32), masks_for_batch(0, 0, ["a", "b"], 64, 0.75))
    assert pred.shape == (2, 64, 4 * 4 * 3)
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_loss_ignores_visible_patches():
    target = torch.randn(2, 10, 12)
    masked = torch.zeros(2, 10)
    masked[:, 5:] = 1
    pred = torch.randn(2, 10, 12)
    other = pred.clone()
    other[:, :5] += 100.0  # change only visible-patch predictions
    for norm_pix in (False, True):
        assert torch.equal(
            reconstruction_loss(pred, target, masked, norm_pix),
            reconstruction_loss(other, target, masked, norm_pix),
        )


def test_norm_pix_target_is_scale_invariant_per_patch():
    target = torch.randn(1, 4, 12)
    masked = torch.ones(1, 4)
    pred = torch.randn(1, 4, 12)
    a = reconstruction_loss(pred, target, masked, True)
    b = reconstruction_loss(pred, target * 5 + 3, masked, True)
    assert torch.allclose(a, b, atol=1e-4)


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = MaskedAutoencoder(CFG)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randn(8, 3, 32, 32)
    mask = masks_for_batch(0, 0, list("abcdefgh"), 64, 0.75)
    first = None
    for _ in range(30):
        loss, _ = model(images, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.8 * first
