"""Starting from published weights, with nothing downloaded: random-weight models built in
transformers and saved, a state dict in the MAE repository's layout, each loaded into our MAE.
Our features and reconstruction loss equal HF's for the same mask (HF's ``noise``), in fp32."""

from __future__ import annotations

import pytest
import torch

from training.config import ModelConfig
from training.modalities.image.bundle import ImageInputConfig, geometry
from training.modalities.image.patches import patchify
from training.objectives.mae.masking import random_mask
from training.objectives.mae.model import MaskedAutoencoder
from training.objectives.mae.published import InitError, load_published, mae_to_ours
from training.positions import sincos_positions

transformers = pytest.importorskip("transformers")

TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 256, "patch_size": 4, "decoder_hidden_size": 32,
        "decoder_num_hidden_layers": 1, "decoder_num_attention_heads": 2,
        "decoder_intermediate_size": 128}  # fmt: skip


def _ours(image_size: int, pool: str = "mean") -> MaskedAutoencoder:
    cfg = ModelConfig(embed_dim=64, depth=2, num_heads=4, mlp_ratio=4.0, decoder_embed_dim=32,
                      decoder_depth=1, decoder_num_heads=2, norm_pix_loss=False, pool=pool,
                      attention="matmul")  # fmt: skip
    return MaskedAutoencoder(cfg, geometry(ImageInputConfig(image_size=image_size, patch_size=4)))


@pytest.fixture(scope="module")
def hf_mae(tmp_path_factory):
    """A random-weight ViTMAEForPreTraining for 32 px images, saved as HF saves it."""
    torch.manual_seed(0)
    config = transformers.ViTMAEConfig(image_size=32, mask_ratio=0.75, **TINY)
    model = transformers.ViTMAEForPreTraining(config).eval()
    folder = tmp_path_factory.mktemp("hf") / "vitmae"
    model.save_pretrained(folder)
    return model, folder


def test_hf_vitmae_loads_and_gives_hfs_loss_for_the_same_mask(hf_mae):
    hf, folder = hf_mae
    ours = _ours(32).eval()
    loaded = load_published(ours, folder)
    assert loaded.layout == "hf" and loaded.missing == [] and loaded.unused == []
    images = torch.randn(3, 3, 32, 32)
    noise = torch.rand(3, 64)
    with torch.no_grad():
        want = hf(pixel_values=images, noise=noise).loss
        got = ours(patchify(images, 4), random_mask(noise, 0.75))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_hf_vitmae_features_are_hfs(hf_mae):
    hf, folder = hf_mae
    for pool in ("mean", "cls"):
        ours = _ours(32, pool).eval()
        load_published(ours, folder)
        images = torch.randn(2, 3, 32, 32)
        hf.config.mask_ratio = 0.0  # every patch (in noise order: the mean and cls do not care)
        with torch.no_grad():
            hidden = hf.vit(pixel_values=images).last_hidden_state
            got = ours.encoder.features(patchify(images, 4))
        hf.config.mask_ratio = 0.75
        want = hidden[:, 1:].mean(1) if pool == "mean" else hidden[:, 0]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_at_another_resolution_the_positions_are_hfs_interpolated(hf_mae):
    hf, folder = hf_mae
    ours = _ours(48).eval()  # 12 x 12 patches from a checkpoint of 8 x 8
    load_published(ours, folder)
    images = torch.randn(2, 3, 48, 48)
    hf.config.mask_ratio = 0.0
    with torch.no_grad():
        hidden = hf.vit(pixel_values=images, interpolate_pos_encoding=True).last_hidden_state
        got = ours.encoder.features(patchify(images, 4))
    hf.config.mask_ratio = 0.75
    torch.testing.assert_close(got, hidden[:, 1:].mean(1), rtol=1e-5, atol=1e-6)


def test_a_224_checkpoint_at_256_gives_hfs_interpolated_features(tmp_path):
    """The paper's resolutions: a ViTMAE of 224 px / 16 (14 x 14 patches) run at 256 px
    (16 x 16): our bicubic resize of its table gives HF's ``interpolate_pos_encoding``."""
    torch.manual_seed(6)
    config = transformers.ViTMAEConfig(image_size=224, mask_ratio=0.0, **{**TINY, "patch_size": 16})
    hf = transformers.ViTMAEModel(config).eval()
    hf.save_pretrained(tmp_path / "vitmae224")
    cfg = ModelConfig(embed_dim=64, depth=2, num_heads=4, mlp_ratio=4.0, decoder_embed_dim=32,
                      decoder_depth=1, decoder_num_heads=2, attention="matmul")  # fmt: skip
    ours = MaskedAutoencoder(cfg, geometry(ImageInputConfig(image_size=256, patch_size=16))).eval()
    load_published(ours, tmp_path / "vitmae224", accept=["decoder."])
    images = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        hidden = hf(pixel_values=images, interpolate_pos_encoding=True).last_hidden_state
        got = ours.encoder.features(patchify(images, 16))
    torch.testing.assert_close(got, hidden[:, 1:].mean(1), rtol=1e-5, atol=1e-5)


def test_an_encoder_alone_is_refused_until_the_decoder_is_accepted(tmp_path):
    torch.manual_seed(1)
    config = transformers.ViTMAEConfig(image_size=32, mask_ratio=0.0, **TINY)
    transformers.ViTMAEModel(config).save_pretrained(tmp_path / "encoder")
    ours = _ours(32)
    with pytest.raises(InitError, match=r"decoder\.\S+ .*pretrain.init_accept=\[decoder.\]"):
        load_published(ours, tmp_path / "encoder")
    loaded = load_published(ours, tmp_path / "encoder", accept=["decoder."])
    assert loaded.missing and all(k.startswith("decoder.") for k in loaded.missing)


def _official_mae_layout(dim=64, depth=2, d=32, dec_depth=1, p=4, c=3, n=64, mlp=4):
    """Names and shapes of ``models_mae.MaskedAutoencoderViT`` (facebookresearch/mae): timm's
    PatchEmbed and Block, MAE's decoder; written here from its model code."""
    shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, n + 1, dim),
              "patch_embed.proj.weight": (dim, c, p, p), "patch_embed.proj.bias": (dim,),
              "norm.weight": (dim,), "norm.bias": (dim,), "mask_token": (1, 1, d),
              "decoder_pos_embed": (1, n + 1, d), "decoder_embed.weight": (d, dim),
              "decoder_embed.bias": (d,), "decoder_norm.weight": (d,), "decoder_norm.bias": (d,),
              "decoder_pred.weight": (p * p * c, d), "decoder_pred.bias": (p * p * c,)}  # fmt: skip
    for prefix, width, count in (("blocks", dim, depth), ("decoder_blocks", d, dec_depth)):
        for i in range(count):
            b = f"{prefix}.{i}."
            shapes |= {f"{b}norm1.weight": (width,), f"{b}norm1.bias": (width,),
                       f"{b}attn.qkv.weight": (3 * width, width), f"{b}attn.qkv.bias": (3 * width,),
                       f"{b}attn.proj.weight": (width, width), f"{b}attn.proj.bias": (width,),
                       f"{b}norm2.weight": (width,), f"{b}norm2.bias": (width,),
                       f"{b}mlp.fc1.weight": (mlp * width, width), f"{b}mlp.fc1.bias": (mlp * width,),
                       f"{b}mlp.fc2.weight": (width, mlp * width), f"{b}mlp.fc2.bias": (width,)}  # fmt: skip
    return shapes


def test_the_mae_repositorys_layout_maps_exactly(tmp_path):
    torch.manual_seed(2)
    state = {k: torch.randn(s) for k, s in _official_mae_layout().items()}
    mapped, unused = mae_to_ours(state)
    ours = _ours(32)
    expected = set(ours.state_dict()) | {"encoder.pos_embed", "decoder.pos_embed"}
    assert unused == [] and set(mapped) == expected  # every tensor has its place, exactly
    torch.save({"model": state}, tmp_path / "checkpoint-799.pth")
    loaded = load_published(ours, tmp_path / "checkpoint-799.pth")
    assert loaded.layout == "mae" and loaded.missing == []
    # the conv patch projection is our Linear over (row, col, channel) patches
    images = torch.randn(2, 3, 32, 32)
    conv = torch.nn.functional.conv2d(images, state["patch_embed.proj.weight"],
                                      state["patch_embed.proj.bias"], stride=4)  # fmt: skip
    torch.testing.assert_close(ours.encoder.patch_embed(patchify(images, 4)),
                               conv.flatten(2).transpose(1, 2))  # fmt: skip
    torch.testing.assert_close(ours.encoder.pos_embed, state["pos_embed"][:, 1:])


@pytest.mark.slow  # ~45 s: three pretraining runs; the loading's equality tests run by default
def test_pretraining_starts_from_an_hf_checkpoint_and_a_bad_one_is_one_line(tmp_path, prepared):
    """``pretrain.init`` under the rank program: the first loss is the loaded model's, not a
    random one's; a file that lacks the decoder is refused before any step (exit 2)."""
    import subprocess
    import sys

    from tests.training.test_pretrain_distributed import _config
    from training.metrics import read_metrics

    nano = {**TINY, "hidden_size": 96, "num_hidden_layers": 4, "num_attention_heads": 3,
            "intermediate_size": 384, "layer_norm_eps": 1e-6}  # fmt: skip
    torch.manual_seed(3)
    config = transformers.ViTMAEConfig(image_size=32, **nano)
    transformers.ViTMAEForPreTraining(config).save_pretrained(tmp_path / "hf")
    transformers.ViTMAEModel(config).save_pretrained(tmp_path / "encoder_only")
    losses = []
    for name, init in (("from_scratch", ""), ("from_hf", str(tmp_path / "hf"))):
        (tmp_path / name).mkdir()
        cfg = _config(tmp_path / name, prepared, precision="fp32", steps=1, init=init,
                      model={"preset": "nano", "decoder_embed_dim": 32, "decoder_depth": 1,
                             "decoder_num_heads": 2, "norm_pix_loss": False})  # fmt: skip
        proc = subprocess.run([sys.executable, "-m", "training.pretrain", str(cfg)],
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        losses.append(read_metrics(tmp_path / name / "run")[0]["loss"])
        if init:
            assert "started from" in proc.stderr and "(hf layout): " in proc.stderr
    assert losses[0] != pytest.approx(losses[1], rel=1e-3)
    (tmp_path / "bad").mkdir()
    cfg = _config(tmp_path / "bad", prepared, steps=1, init=str(tmp_path / "encoder_only"),
                  model={"preset": "nano", "decoder_embed_dim": 32, "decoder_depth": 1,
                         "decoder_num_heads": 2})  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "training.pretrain", str(cfg)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "pretrain.init: " in proc.stderr and "init_accept=[decoder.]" in proc.stderr


def test_zero_steps_from_published_weights_export_them_as_loaded(tmp_path, prepared):
    """``pretrain: {init: HF folder, steps: 0}``: no step is taken, and the export holds the
    published weights as our model loads them, for the evaluation stages (fine-tune, probe,
    k-NN) to start from. Without init, 0 steps is refused by key."""
    import subprocess
    import sys

    from tests.training.test_pretrain_distributed import _config
    from training.export import load_model
    from training.export_format import read_export
    from training.objectives import objective

    nano = {**TINY, "hidden_size": 96, "num_hidden_layers": 4, "num_attention_heads": 3,
            "intermediate_size": 384, "layer_norm_eps": 1e-6}  # fmt: skip
    torch.manual_seed(5)
    transformers.ViTMAEForPreTraining(
        transformers.ViTMAEConfig(image_size=32, **nano)
    ).save_pretrained(tmp_path / "hf")
    model = {"preset": "nano", "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2,
             "norm_pix_loss": False}  # fmt: skip
    cfg = _config(tmp_path, prepared, precision="fp32", steps=0, init=str(tmp_path / "hf"),
                  model=model)  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "training.pretrain", str(cfg)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    exported = load_model(tmp_path / "run" / "export").state_dict()
    export = read_export(tmp_path / "run" / "export")
    assert export.info["step"] == 0
    fresh = objective("mae").build_model(export.model, export.geometry, None)
    load_published(fresh, tmp_path / "hf")
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(exported[name], tensor), name
    # HF's tables order their sin-cos halves otherwise than ours: the export holds HF's, which
    # the loaded weights were trained with, so evaluation does not recompute ours
    assert export.model.stored_positions
    hf_table = transformers.ViTMAEForPreTraining.from_pretrained(tmp_path / "hf").state_dict()
    want = hf_table["vit.embeddings.position_embeddings"][:, 1:]
    assert torch.equal(exported["encoder.pos_embed"], want)
    assert not torch.equal(want, sincos_positions(96, (8, 8))[None])
    from training.config import pretrain_schema
    from training.typed_config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"steps: an int >= 1 \(0 with init"):
        load_config(pretrain_schema, [{"train_shards": "x", "out_dir": "y", "steps": 0}])
