"""Starting from VideoMAE's published weights, with nothing downloaded: random-weight HF
``VideoMAEForPreTraining`` models built in transformers and saved (every tensor drawn at random,
so a bias loaded as zeros cannot pass), loaded into our MAE. For the same mask (HF's
``bool_masked_pos``) our encoder's tokens and our decoder's predictions equal HF's in fp32."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from training.config import ModelConfig
from training.modalities.video.bundle import VideoInputConfig, geometry
from training.modalities.video.ops import tubeletize
from training.objectives.mae.masking import random_mask
from training.objectives.mae.model import MaskedAutoencoder, reconstruction_loss
from training.objectives.mae.published import (
    InitError,
    load_published,
    positions_for,
    videomae_positions,
)

transformers = pytest.importorskip("transformers")

TINY = {"image_size": 16, "patch_size": 4, "num_frames": 4, "tubelet_size": 2, "hidden_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256,
        "decoder_hidden_size": 32, "decoder_num_hidden_layers": 1,
        "decoder_num_attention_heads": 2, "decoder_intermediate_size": 128,
        "norm_pix_loss": False}  # fmt: skip
GRID = 2 * 4 * 4  # (frames / tubelet) x rows x cols tokens


def _ours(frame_size=16, num_frames=4, **model) -> MaskedAutoencoder:
    cfg = ModelConfig(embed_dim=64, depth=2, num_heads=4, mlp_ratio=4.0, decoder_embed_dim=32,
                      decoder_depth=1, decoder_num_heads=2, norm_pix_loss=False,
                      attention="matmul", **{"cls_token": False, "final_norm": False, **model})  # fmt: skip
    video = VideoInputConfig(num_frames=num_frames, frame_size=frame_size, patch_size=4, tubelet=2)
    return MaskedAutoencoder(cfg, geometry(video))


@pytest.fixture(scope="module")
def hf_videomae(tmp_path_factory):
    """A random-weight VideoMAEForPreTraining (every tensor random), saved as HF saves it."""
    torch.manual_seed(0)
    model = transformers.VideoMAEForPreTraining(transformers.VideoMAEConfig(**TINY)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # norm weights about 1, the rest about 0
            p.normal_(1.0 if "norm" in name and name.endswith("weight") else 0.0, 0.1)
    folder = tmp_path_factory.mktemp("hf") / "videomae"
    model.save_pretrained(folder)
    return model, folder


def _mask(batch: int, masked: int) -> torch.Tensor:
    """HF's ``bool_masked_pos``: ``masked`` random tokens of each row."""
    rows = [torch.randperm(GRID)[:masked] for _ in range(batch)]
    return torch.stack([torch.zeros(GRID, dtype=torch.bool).index_fill(0, r, True) for r in rows])


def _same_mask(bool_masked: torch.Tensor):
    """Our Mask hiding exactly HF's tokens (visible first, each part in index order)."""
    order = torch.arange(GRID) / (2 * GRID)
    return random_mask(bool_masked.float() + order, 0.0, keep=int((~bool_masked[0]).sum()))


def test_videomae_loads_and_predicts_what_hf_predicts_for_the_same_mask(hf_videomae):
    hf, folder = hf_videomae
    ours = _ours().eval()
    loaded = load_published(ours, folder)
    assert loaded.layout == "hf-videomae" and loaded.missing == [] and loaded.unused == []
    pixels = torch.randn(3, 4, 3, 16, 16)  # HF's [B, T, C, H, W], normalised
    bool_masked = _mask(3, 29)
    with torch.no_grad():
        want = hf(pixel_values=pixels, bool_masked_pos=bool_masked)
        tokens = tubeletize(pixels.permute(0, 1, 3, 4, 2), 2, 4)
        _, pred, ids = ours._loss_and_predictions(tokens, _same_mask(bool_masked))
    assert torch.equal(ids, torch.stack([torch.nonzero(m).squeeze(1) for m in bool_masked]))
    torch.testing.assert_close(pred, want.logits, rtol=1e-5, atol=1e-5)
    # VideoMAE's target is the un-normalised pixels in [0, 1] (ours: the normalised tokens);
    # for its target our loss is its loss
    mean = torch.tensor([0.485, 0.456, 0.406])
    std = torch.tensor([0.229, 0.224, 0.225])
    raw = tubeletize(pixels.permute(0, 1, 3, 4, 2) * std + mean, 2, 4)
    target = raw[bool_masked].reshape(3, 29, -1)
    torch.testing.assert_close(reconstruction_loss(pred, target, False), want.loss, rtol=1e-5,
                               atol=1e-6)  # fmt: skip


def test_videomae_features_are_hfs(hf_videomae):
    hf, folder = hf_videomae
    ours = _ours().eval()
    load_published(ours, folder)
    pixels = torch.randn(2, 4, 3, 16, 16)
    with torch.no_grad():
        hidden = hf.videomae(pixel_values=pixels).last_hidden_state
        encoded = ours.encoder(tubeletize(pixels.permute(0, 1, 3, 4, 2), 2, 4))
        features = ours.encoder.features(tubeletize(pixels.permute(0, 1, 3, 4, 2), 2, 4))
    torch.testing.assert_close(encoded[:, 1:], hidden, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(features, hidden.mean(1), rtol=1e-5, atol=1e-5)


def test_the_hubs_q_bias_and_v_bias_are_loaded_not_zeroed(hf_videomae, tmp_path):
    """The hub's VideoMAE files (transformers 4's names) hold ``q_bias``/``v_bias`` beside
    bias-free ``query``/``value`` Linears: renamed from transformers 5's save, they load to the
    same model, and the biases are not zeros."""
    _, folder = hf_videomae
    state = load_file(str(folder / "model.safetensors"))
    hub = {k.replace(".attention.attention.query.bias", ".attention.attention.q_bias")
           .replace(".attention.attention.value.bias", ".attention.attention.v_bias"): v
           for k, v in state.items()}  # fmt: skip
    assert any(k.endswith(".q_bias") for k in hub) and not any(".query.bias" in k for k in hub)
    save_file(hub, str(tmp_path / "hub.safetensors"))
    from_hub, from_folder = _ours(), _ours()
    load_published(from_hub, tmp_path / "hub.safetensors")
    load_published(from_folder, folder)
    for name, tensor in from_folder.state_dict().items():
        assert torch.equal(from_hub.state_dict()[name], tensor), name
    qkv_bias = from_hub.state_dict()["encoder.blocks.0.attn.qkv.bias"]
    assert qkv_bias[:64].abs().min() > 0 and qkv_bias[64:128].abs().max() == 0  # q, zero k
    assert torch.equal(qkv_bias[128:], hub["videomae.encoder.layer.0.attention.attention.v_bias"])


def test_a_model_with_a_cls_token_or_a_final_norm_is_refused_by_key(hf_videomae):
    _, folder = hf_videomae
    with pytest.raises(InitError, match=r"pretrain\.model\.cls_token: false"):
        load_published(_ours(cls_token=True), folder)
    with pytest.raises(InitError, match=r"final_norm: false \(the file has no final layernorm"):
        load_published(_ours(final_norm=True), folder)


def test_the_position_table_is_videomaes_and_resizes_to_another_grid(hf_videomae):
    from transformers.models.videomae.modeling_videomae import get_sinusoid_encoding_table

    torch.testing.assert_close(videomae_positions(GRID, 64), get_sinusoid_encoding_table(GRID, 64))
    _, folder = hf_videomae
    ours = _ours(frame_size=20, num_frames=6)  # (3, 5, 5) tokens from a (2, 4, 4) checkpoint
    load_published(ours, folder)
    want = positions_for(videomae_positions(GRID, 64), (3, 5, 5), (2, 4, 4))
    torch.testing.assert_close(ours.encoder.pos_embed, want)
    # space: each frame's table bicubically resized, as a 2-D table is; time: linearly
    same_frames = positions_for(videomae_positions(GRID, 64), (2, 5, 5), (2, 4, 4))
    for t in range(2):
        frame = videomae_positions(GRID, 64)[:, t * 16 : (t + 1) * 16]
        torch.testing.assert_close(
            same_frames[:, t * 25 : (t + 1) * 25], positions_for(frame, (5, 5), (4, 4))
        )
    middle = (want[:, 25:50] - (same_frames[:, :25] + same_frames[:, 25:]) / 2).abs().max()
    assert middle < 1e-5  # the middle of 3 frames is the mean of the 2 it came from


def test_a_model_without_cls_token_or_final_norm_trains_every_tensor(hf_videomae):
    """Continued pretraining from VideoMAE: one step's loss reaches every parameter (an unused
    one would stall ZeRO's gradient partitions), and the features are the tokens' mean."""
    _, folder = hf_videomae
    ours = _ours()
    load_published(ours, folder)
    tokens = tubeletize(torch.randn(2, 4, 16, 16, 3), 2, 4)
    ours(tokens, _same_mask(_mask(2, 24))).backward()
    assert [n for n, p in ours.named_parameters() if p.grad is None or not p.grad.any()] == []
    encoded = ours.encoder(tokens)
    torch.testing.assert_close(encoded[:, 0], encoded[:, 1:].mean(1))


@pytest.mark.slow  # ~30 s: two pretraining runs of the rank program on the clip shards
def test_video_pretraining_continues_from_videomae_and_exports_its_positions(tmp_path,
                                                                              clips_prepared):  # fmt: skip
    """``pretrain.init`` of a VideoMAE folder under the rank program: two steps train on, the
    export holds VideoMAE's position table (which our 3-D sin-cos would silently replace) and
    loads for the evaluation stages; a model with a cls token is refused by key (exit 2)."""
    import subprocess
    import sys

    import yaml

    from training.export import load_encoder
    from training.export_format import read_export

    torch.manual_seed(4)
    nano = {**TINY, "image_size": 32, "patch_size": 8, "num_frames": 8, "hidden_size": 96,
            "num_hidden_layers": 4, "num_attention_heads": 3, "intermediate_size": 384}  # fmt: skip
    transformers.VideoMAEForPreTraining(transformers.VideoMAEConfig(**nano)).save_pretrained(
        tmp_path / "hf"
    )
    model = {"preset": "nano", "decoder_embed_dim": 32, "decoder_depth": 1,
             "decoder_num_heads": 2, "norm_pix_loss": False, "cls_token": False,
             "final_norm": False}  # fmt: skip
    procs = {}
    for name, extra in (("ok", {}), ("cls", {"cls_token": True})):
        cfg = {"modality": "video", "train_shards": str(clips_prepared / "train"),
               "out_dir": str(tmp_path / name), "init": str(tmp_path / "hf"),
               "input": {"num_frames": 8, "frame_size": 32, "patch_size": 8, "tubelet": 2},
               "model": {**model, **extra}, "mask": {"kind": "tube", "ratio": 0.75},
               "batch_size": 4, "steps": 2, "precision": "fp32", "checkpoint_every": 2,
               "optim": {"lr": 1e-4, "warmup_steps": 1}, "loader": {"workers": 1}}  # fmt: skip
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        procs[name] = subprocess.run(
            [sys.executable, "-m", "training.pretrain", str(tmp_path / f"{name}.yaml")],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert procs["ok"].returncode == 0, procs["ok"].stderr[-3000:]
    assert "(hf-videomae layout): " in procs["ok"].stderr
    export = read_export(tmp_path / "ok" / "export")
    assert export.model.stored_positions and not export.model.cls_token
    encoder = load_encoder(tmp_path / "ok" / "export")
    assert torch.equal(encoder.pos_embed, videomae_positions(4 * 4 * 4, 96))
    bad = procs["cls"]
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
    assert "pretrain.model.cls_token: false" in bad.stderr
