"""Configuration of the latent action model (LAM) and its named presets.

Presets: `tiny` (tests, trains in seconds), `coinrun` (64x64, sized for about 45 minutes on a
2-core CPU), `base` and `large` (GPU; `large` follows Genie's CoinRun case study).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tokenizer.config import QuantizerConfig
from worldsim.config import build_preset, from_dict


def _action_quantizer(codes: int = 8, dim: int = 32, dead_after: int = 25) -> QuantizerConfig:
    # Genie's LAM: a VQ with a handful of codes (|A| = 8) of dim 32; l2-normalised codes and
    # restarts of codes idle for `dead_after` steps keep several actions alive.
    # With 8 codes and ~60 latents a batch a code unused for 25 steps is dead, not unlucky.
    # Restarts land exactly on an encoder output: early in training one batch's action latents
    # lie closer together than the tokenizer's restart noise (0.02), and on a toy task noisy
    # restarts never won a latent (1 of 4 actions in use) while exact ones kept 3-4 in use.
    return QuantizerConfig(
        type="vq",
        codebook_size=codes,
        code_dim=dim,
        commitment=0.25,
        dead_after=dead_after,
        restart_noise=0.0,
    )


@dataclass
class LAMConfig:
    image_size: int = 64  # frames are square image_size x image_size
    channels: int = 3
    # One token per patch_size^2 pixels: 64x64 -> 8x8 tokens. The LAM needs only the gist of a
    # frame's change, so a coarser grid than the tokenizer's buys steps on CPU.
    patch_size: int = 8
    max_frames: int = 16  # longest clip (Genie's 16); the decoder has max_frames - 1 time positions
    # "conv": per-frame conv stem / pixel-shuffle head (cheaper than patch attention on CPU);
    # "patch": Genie's linear patch embedding. Shared with the tokenizer (tokenizer.model.STEMS).
    stem: str = "conv"
    encoder_conv_width: int = 64  # conv stem channels on the grid, halved per 2x step to pixels
    decoder_conv_width: int = 64  # same for the decoder's own stem and its conv head
    width: int = 128  # transformer width on the token grid
    encoder_depth: int = 2  # causal ST blocks before the action read-out
    decoder_depth: int = 2  # ST blocks of the next-frame decoder
    num_heads: int = 4
    mlp_ratio: float = 2.0  # half the usual 4: the MLP dominates a block's cost at width 128
    qk_norm: bool = True  # keeps attention logits bounded at lr 1e-3
    attention: str = "auto"  # backend name, see worldsim.nn.attention.ATTENTION_BACKENDS
    # What the decoder sees besides the action (simulator.lam.DECODER_CONTEXTS). "last_frame":
    # only frame t when predicting frame t+1, a tighter bottleneck than Genie's "all_frames"
    # (the 2-frame decoder of AdaWorld, Gao et al. 2025): the decoder cannot extrapolate motion from
    # history, so all of the change, and hence the control, must pass through the action.
    decoder_context: str = "last_frame"
    # Predict frame t+1 as frame t plus a decoded change: copying is free, so the decoder's
    # capacity and the action's few bits go to what moved.
    predict_delta: bool = True
    quantizer: QuantizerConfig = field(default_factory=_action_quantizer)

    @property
    def grid(self) -> int:
        """Tokens per side of a frame."""
        return self.image_size // self.patch_size

    @property
    def num_actions(self) -> int:
        return self.quantizer.num_codes

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LAMConfig:
        cfg = from_dict(cls, data, where="lam config")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ValueError naming every inconsistent option. Unknown `stem`, `decoder_context`,
        `attention` and `quantizer.type` names are reported by their registries at build time."""
        problems = self.quantizer.problems()
        positive = ("image_size", "channels", "patch_size", "width", "num_heads", "encoder_depth")
        problems += [
            f"{n} must be >= 1, got {getattr(self, n)}" for n in positive if getattr(self, n) < 1
        ]
        if self.max_frames < 2:
            problems.append(
                f"max_frames must be >= 2 (actions sit between frames), got {self.max_frames}"
            )
        if self.decoder_depth < 0:
            problems.append(f"decoder_depth must be >= 0, got {self.decoder_depth}")
        if self.patch_size >= 1 and self.image_size % self.patch_size:
            problems.append(
                f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}"
            )
        if self.stem == "conv" and self.patch_size & (self.patch_size - 1):
            problems.append(f"the conv stem needs a power-of-two patch_size, got {self.patch_size}")
        if self.num_heads >= 1 and self.width % self.num_heads:
            problems.append(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if problems:
            raise ValueError("bad latent action model config: " + "; ".join(problems))


def _tiny() -> LAMConfig:
    return LAMConfig(
        image_size=16,
        patch_size=4,
        max_frames=8,
        encoder_conv_width=16,
        decoder_conv_width=16,
        width=32,
        encoder_depth=1,
        decoder_depth=1,
        num_heads=2,
        quantizer=_action_quantizer(codes=4, dim=8, dead_after=2),
    )


def _coinrun() -> LAMConfig:
    return LAMConfig()


def _base() -> LAMConfig:
    return LAMConfig(
        width=256,
        encoder_depth=4,
        decoder_depth=4,
        num_heads=8,
        mlp_ratio=4.0,
        decoder_conv_width=128,
        quantizer=_action_quantizer(dead_after=50),
    )


def _large() -> LAMConfig:
    # Genie's CoinRun case study (Bruce et al. 2024, appendix; as reproduced by Jafar): linear
    # patches of 16, 8 layers of width 512 on each side, 6 latent actions of dim 32.
    return LAMConfig(
        stem="patch",
        patch_size=16,
        width=512,
        encoder_depth=8,
        decoder_depth=8,
        num_heads=8,
        mlp_ratio=4.0,
        decoder_context="all_frames",
        predict_delta=False,
        quantizer=_action_quantizer(codes=6, dead_after=50),
    )


PRESETS: dict[str, Callable[[], LAMConfig]] = {
    "tiny": _tiny,
    "coinrun": _coinrun,
    "base": _base,
    "large": _large,
}


def lam_preset(name: str, **overrides: Any) -> LAMConfig:
    """A fresh copy of preset `name` with top-level fields replaced by `overrides`."""
    return build_preset(PRESETS, name, "latent action model", overrides)
