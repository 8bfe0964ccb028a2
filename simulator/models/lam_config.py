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
from worldsim.nn.frames import FrameGridConfig


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
class LAMConfig(FrameGridConfig):
    """The frame grid, stems and ST blocks are `FrameGridConfig`'s (shared with the tokenizer);
    the LAM's own defaults and fields follow."""

    # 64x64 -> 8x8 tokens: the LAM needs only the gist of a frame's change, so a coarser grid
    # than the tokenizer's buys steps on CPU.
    patch_size: int = 8
    encoder_depth: int = 2  # causal ST blocks before the action read-out
    # What the decoder sees besides the action (simulator.models.lam.DECODER_CONTEXTS).
    # "last_frame": only frame t when predicting frame t+1, a tighter bottleneck than Genie's
    # "all_frames" (the 2-frame decoder of AdaWorld, Gao et al. 2025): the decoder cannot
    # extrapolate motion from history, so all of the change, and hence the control, must pass
    # through the action.
    decoder_context: str = "last_frame"
    # Predict frame t+1 as frame t plus a decoded change: copying is free, so the decoder's
    # capacity and the action's few bits go to what moved.
    predict_delta: bool = True
    quantizer: QuantizerConfig = field(default_factory=_action_quantizer)

    @property
    def num_actions(self) -> int:
        return self.quantizer.num_codes

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LAMConfig:
        cfg = from_dict(cls, data, where="lam config")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ValueError naming every inconsistent option. Unknown `decoder_context`,
        `attention` and `quantizer.type` names are reported by their registries at build time."""
        problems = self.quantizer.problems() + self.grid_problems()
        if self.max_frames < 2:
            problems.append(
                f"max_frames must be >= 2 (actions sit between frames), got {self.max_frames}"
            )
        if self.encoder_depth < 1:
            problems.append(f"encoder_depth must be >= 1, got {self.encoder_depth}")
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
