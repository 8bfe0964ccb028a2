"""VideoTokenizer on the `tiny` preset: shapes, causality, save/load, bad inputs, learning."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tokenizer.config import PRESETS, QuantizerConfig, TokenizerConfig, tokenizer_preset
from tokenizer.model import VideoTokenizer, frame_psnr

VARIANTS = {
    "conv-fsq": {},
    "patch-vq": {
        "stem": "patch",
        "quantizer": QuantizerConfig(type="vq", codebook_size=64, code_dim=8),
    },
}


def _model(variant: str = "conv-fsq") -> VideoTokenizer:
    torch.manual_seed(0)
    return VideoTokenizer(tokenizer_preset("tiny", **VARIANTS[variant]))


def _frames(b: int = 2, t: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, 3, 16, 16, generator=g) * 2 - 1  # (B, T, C, H, W)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_encode_decode_shapes_and_token_range(variant: str) -> None:
    model = _model(variant).eval()
    tokens = model.encode(_frames())
    assert tokens.shape == (2, 4, 4, 4) and tokens.dtype == torch.int64
    assert int(tokens.min()) >= 0 and int(tokens.max()) < model.num_codes
    frames = model.decode(tokens)
    assert frames.shape == (2, 4, 3, 16, 16)
    assert frames.min() >= -1 and frames.max() <= 1


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_loss_output(variant: str) -> None:
    out = _model(variant).train()(_frames())
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert set(out.metrics) == {"mse", "psnr", "quantizer_loss", "usage", "perplexity"}
    assert out.recon.shape == (2, 4, 3, 16, 16)
    torch.testing.assert_close(out.loss, out.metrics["mse"] + out.metrics["quantizer_loss"])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_tokens_and_frames_are_causal_in_time(variant: str) -> None:
    model = _model(variant).eval()
    frames = _frames(t=6)
    tokens = model.encode(frames)
    for k in (1, 3):
        assert torch.equal(model.encode(frames[:, :k]), tokens[:, :k])
        torch.testing.assert_close(model.decode(tokens[:, :k]), model.decode(tokens)[:, :k])
    # ...and the later frames do change what is decoded for them.
    changed = model.decode(torch.cat([tokens[:, :3], (tokens[:, 3:] + 1) % model.num_codes], 1))
    assert not torch.allclose(changed[:, 3:], model.decode(tokens)[:, 3:])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_save_and_load_give_the_same_model(variant: str, tmp_path: Path) -> None:
    model = _model(variant).train()
    model(_frames())  # one training forward: VQ buffers (init, EMA, idle counters) move
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = VideoTokenizer.from_pretrained(tmp_path).eval()
    model.eval()
    assert loaded.cfg == model.cfg
    frames = _frames(seed=1)
    tokens = model.encode(frames)
    assert torch.equal(loaded.encode(frames), tokens)
    torch.testing.assert_close(loaded.decode(tokens), model.decode(tokens), atol=0, rtol=0)


def test_loading_the_wrong_thing_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json missing"):
        VideoTokenizer.from_pretrained(tmp_path / "nowhere")
    _model().save_pretrained(tmp_path)
    config = tmp_path / "config.json"
    saved = json.loads(config.read_text())
    config.write_text(json.dumps(saved | {"_class_name": "LatentActionModel"}))
    with pytest.raises(ValueError, match="holds a 'LatentActionModel' checkpoint"):
        VideoTokenizer.from_pretrained(tmp_path)
    config.write_text(json.dumps(saved))
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot load VideoTokenizer from"):
        VideoTokenizer.from_pretrained(tmp_path)
    config.write_text("{not json")
    with pytest.raises(ValueError, match="corrupt config file"):
        VideoTokenizer.from_pretrained(tmp_path)


def _bad_frames() -> dict[str, tuple[torch.Tensor, str]]:
    nan, inf = _frames(), _frames()
    nan[0, 0, 0, 0, 0] = float("nan")
    inf[1, 2, 1, 3, 3] = float("inf")
    return {
        "channels": (torch.zeros(1, 2, 1, 16, 16), "1 channels; this tokenizer takes 3"),
        "size": (torch.zeros(1, 2, 3, 32, 32), "32x32; this tokenizer takes 16x16"),
        "not divisible": (torch.zeros(1, 2, 3, 18, 18), r"18x18.*patch size 4"),
        "range": (_frames() * 255, r"must lie in \[-1, 1\]"),
        "nan": (nan, "NaN or inf"),
        "inf": (inf, "NaN or inf"),
        "ndim": (torch.zeros(2, 3, 16, 16), r"\(B, T, C, H, W\)"),
        "length": (torch.zeros(1, 9, 3, 16, 16), "1..8 frames"),
        "dtype": (torch.zeros(1, 2, 3, 16, 16, dtype=torch.uint8), "float tensor"),
    }


@pytest.mark.parametrize("case", sorted(_bad_frames()))
def test_bad_frames_are_named(case: str) -> None:
    frames, message = _bad_frames()[case]
    model = _model()
    with pytest.raises(ValueError, match=message):
        model.encode(frames)
    with pytest.raises(ValueError, match=message):
        model.loss(frames)


def test_frames_within_rounding_of_the_range_are_accepted() -> None:
    _model().encode(_frames().clamp(-1, 1) * 1.0005)


def test_bad_tokens_are_named() -> None:
    model = _model()
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 125\)"):
        model.decode(torch.full((1, 2, 4, 4), 125))
    with pytest.raises(ValueError, match=r"tokens must be \(B, T, 4, 4\)"):
        model.decode(torch.zeros(1, 2, 5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor"):
        model.decode(torch.zeros(1, 2, 4, 4))


def test_a_few_steps_reduce_the_loss() -> None:
    model = _model().train()
    # Smooth images (upsampled 4x4 noise): learnable, unlike white noise whose best fit is its mean.
    coarse = _frames(b=4, t=4).flatten(0, 1)[:, :, :4, :4]
    frames = F.interpolate(coarse, size=16, mode="bilinear").unflatten(0, (4, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = model(frames)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.6 * losses[0]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_frozen_tokens_train_only_the_decoder(variant: str) -> None:
    model = _model(variant).train()
    frames = _frames(b=2, t=4)
    model(frames)  # a VQ codebook initialises on its first training batch
    tokens, recon = model.encode(frames), model.eval().decode(model.encode(frames))
    with pytest.raises(ValueError, match="token_noise trains the decoder alone"):
        model.train()(frames, token_noise=0.2)
    model.freeze_tokens()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and len(trainable) < len(list(model.parameters()))
    opt = torch.optim.AdamW(trainable, lr=3e-3)
    for _ in range(3):
        out = model(frames, token_noise=0.5)  # the decoder sees partly random tokens
        assert set(out.metrics) == {"mse", "psnr", "quantizer_loss", "usage", "perplexity"}
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    model.eval()
    assert torch.equal(model.encode(frames), tokens)  # the tokens did not move
    assert not torch.allclose(model.decode(tokens), recon)  # the decoder did


def test_bf16_autocast_forward() -> None:
    model = _model("patch-vq").train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(_frames())
    assert torch.isfinite(out.loss) and out.loss.dtype == torch.float32


def test_frame_psnr() -> None:
    target = torch.zeros(1, 2, 3, 4, 4)
    assert frame_psnr(target + 0.2, target).item() == pytest.approx(
        10 * torch.log10(torch.tensor(100.0)).item()
    )


def test_presets_and_config_validation() -> None:
    for name in PRESETS:
        cfg = tokenizer_preset(name)
        assert TokenizerConfig.from_dict(dataclasses.asdict(cfg)) == cfg  # JSON-able round trip
    large = tokenizer_preset("large")
    assert (large.width, large.encoder_depth, large.patch_size) == (512, 8, 4)
    assert (large.quantizer.type, large.quantizer.num_codes) == ("vq", 1024)
    assert tokenizer_preset("coinrun").image_size == 64
    with pytest.raises(ValueError, match="unknown tokenizer preset 'huge'"):
        tokenizer_preset("huge")
    with pytest.raises(ValueError, match="image_size 18 is not divisible by patch_size 4"):
        tokenizer_preset("tiny", image_size=18)
    with pytest.raises(ValueError, match="power-of-two patch_size"):
        tokenizer_preset("tiny", image_size=18, patch_size=6)
    with pytest.raises(ValueError, match="unknown key"):
        TokenizerConfig.from_dict({"widht": 3})
    with pytest.raises(ValueError, match="unknown stem 'vit'"):
        VideoTokenizer(tokenizer_preset("tiny", stem="vit"))
