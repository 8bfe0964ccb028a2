"""Configuration of the delta tokenizer (tokenizer/delta.py) and its named presets.

Presets: `tiny` (tests, trains in seconds) and `coinrun` (64x64, sized for about half an hour on
a 2-core CPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worldsim.config import build_preset, from_dict


@dataclass
class DeltaTokenizerConfig:
    image_size: int = 64  # frames are square image_size x image_size
    channels: int = 3
    # The engine's window for the dynamics model; the renderer itself reads two past frames.
    max_frames: int = 16
    # Delta tokens per frame, laid out as a grid x grid square for the dynamics model. Delta-IRIS
    # uses 4: the renderer already has the past frames, so the tokens carry only what the past
    # does not predict (which way the view moves, what appears).
    tokens: int = 4
    # FSQ levels of each token: [5, 5, 5] gives 125 codes (7 bits), 28 bits a frame with 4
    # tokens. Few bits keep the tokens about the change, and easy for the dynamics to predict.
    levels: list[int] = field(default_factory=lambda: [5, 5, 5])
    # Conv channels at full resolution; x2 at 1/2 and x4 at 1/4 resolution. The warp carries the
    # full-resolution detail, so the net can be narrow there: width 16 trains 2x faster than 24.
    width: int = 16
    blocks: int = 2  # FiLM residual blocks at 1/4 resolution, where a 3x3 conv sees +-4 px
    cond_width: int = 256  # width of the token vector that modulates the renderer (FiLM)
    # Largest displacement the renderer's flow may take, in pixels: the bound of its tanh.
    max_flow: float = 8.0
    # How the warp reads between pixels (grid_sample mode). Bilinear averages neighbours, a
    # low-pass filter that a rollout applies again every step (textures and sprites blur away
    # in 10-20 steps); bicubic keeps more of the detail a sub-pixel shift moves.
    interpolation: str = "bilinear"
    # Width of the continuous controls (a driving world's [steer, gas, brake]) that the change
    # encoder and the renderer read beside the frames; 0: neither reads actions. A renderer told
    # the controls turns and moves the view itself, frame after frame from its own pixels, so the
    # tokens (and the dynamics that predicts them) carry only what the controls do not say.
    action_dim: int = 0
    # Whether the tokens shape the warp's flow. False: the flow is read off the 1/4-resolution
    # features, which see only the two frames and the controls, so the view moves the way the
    # controls say and the tokens only paint what the warp cannot bring (needs action_dim). With
    # True the tokens carry the motion itself, and a renderer told controls barely reads them
    # (measured: the wrong controls cost 0.3 dB; RECIPE of checkpoints/delta_carracing_controls).
    flow_from_tokens: bool = True

    @property
    def grid(self) -> int:
        """Tokens per side of a frame."""
        return math.isqrt(self.tokens)

    @property
    def num_codes(self) -> int:
        return math.prod(self.levels)

    @property
    def bits_per_frame(self) -> float:
        return self.tokens * math.log2(self.num_codes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeltaTokenizerConfig:
        cfg = from_dict(cls, data, where="delta tokenizer config")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ValueError naming every inconsistent option."""
        out = []
        for name in ("image_size", "channels", "max_frames", "width", "cond_width", "tokens"):
            if getattr(self, name) < 1:
                out.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.tokens >= 1 and self.grid**2 != self.tokens:
            out.append(
                f"tokens must be a square number (a grid for the dynamics), got {self.tokens}"
            )
        if self.image_size % 16:
            out.append(
                f"image_size must be a multiple of 16 (four 2x steps), got {self.image_size}"
            )
        if not self.levels or any(level < 2 for level in self.levels):
            out.append(f"levels must be a non-empty list of ints >= 2, got {self.levels}")
        if self.interpolation not in ("bilinear", "bicubic"):
            out.append(f"interpolation must be 'bilinear' or 'bicubic', got {self.interpolation!r}")
        if self.action_dim < 0:
            out.append(f"action_dim must be >= 0, got {self.action_dim}")
        if not self.flow_from_tokens and self.action_dim < 1:
            out.append("flow_from_tokens=False needs action_dim >= 1: the flow reads the controls")
        if self.blocks < 0 or self.max_flow <= 0:
            out.append("blocks must be >= 0 and max_flow > 0")
        if out:
            raise ValueError("bad delta tokenizer config: " + "; ".join(out))


def _tiny() -> DeltaTokenizerConfig:
    return DeltaTokenizerConfig(
        image_size=16, max_frames=8, levels=[5, 5], width=8, blocks=1, cond_width=16
    )


def _coinrun() -> DeltaTokenizerConfig:
    return DeltaTokenizerConfig()  # width 16: 0.6M parameters, 87 frames/s trained on 2 cores


PRESETS: dict[str, Callable[[], DeltaTokenizerConfig]] = {
    "tiny": _tiny,
    "coinrun": _coinrun,
}


def delta_tokenizer_preset(name: str, **overrides: Any) -> DeltaTokenizerConfig:
    """A fresh copy of preset `name` with top-level fields replaced by `overrides`."""
    return build_preset(PRESETS, name, "delta tokenizer", overrides)
