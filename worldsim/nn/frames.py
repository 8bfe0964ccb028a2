"""What the pixel-reading video transformers (the tokenizer and the latent action model) share:
the frame grid config, the per-frame stems and heads, and their ST-transformer stacks.

`FrameGridConfig` holds the fields both configs have (frame size, patch grid, stem, widths,
depths, attention), with the checks that go with them; `TokenizerConfig` and `LAMConfig` extend
it. A stem maps frames (B, T, C, H, W) to tokens (B, T, h*w, width) and a head maps tokens back;
"conv" (stride-2 convs, pixel-shuffle head) carries pixels far more cheaply than attention on
CPU, "patch" is Genie's linear patch embedding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from einops import rearrange
from torch import Tensor, nn

from worldsim.nn.st_block import STTransformer


@dataclass
class FrameGridConfig:
    image_size: int = 64  # frames are square image_size x image_size
    channels: int = 3
    patch_size: int = 4  # one token per patch_size^2 pixels: 64x64 -> 16x16 tokens
    max_frames: int = 16  # longest clip, and the length of learned temporal position tables
    stem: str = "conv"  # a key of STEMS
    encoder_conv_width: int = 64  # conv stem channels on the grid, halved per 2x step to pixels
    decoder_conv_width: int = 64  # same for the conv head (and the LAM decoder's own stem)
    width: int = 128  # transformer width on the token grid
    encoder_depth: int = 1  # ST blocks before the bottleneck (quantizer or action read-out)
    decoder_depth: int = 2  # ST blocks after it
    num_heads: int = 4
    mlp_ratio: float = 2.0  # half the usual 4: the MLP dominates a block's cost at width 128
    qk_norm: bool = True  # Genie uses QK-norm; it keeps attention logits bounded at lr 1e-3
    attention: str = "auto"  # backend name, see worldsim.nn.attention.ATTENTION_BACKENDS

    @property
    def grid(self) -> int:
        """Tokens per side of a frame."""
        return self.image_size // self.patch_size

    def grid_problems(self) -> list[str]:
        """Every inconsistency among the shared fields, as messages."""
        positive = ("image_size", "channels", "patch_size", "max_frames", "width", "num_heads")
        out = [
            f"{n} must be >= 1, got {getattr(self, n)}" for n in positive if getattr(self, n) < 1
        ]
        if self.patch_size >= 1 and self.image_size % self.patch_size:
            out.append(
                f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}"
            )
        if self.stem == "conv" and self.patch_size & (self.patch_size - 1):
            out.append(f"the conv stem needs a power-of-two patch_size, got {self.patch_size}")
        if self.num_heads >= 1 and self.width % self.num_heads:
            out.append(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.encoder_depth < 0 or self.decoder_depth < 0:
            out.append("encoder_depth and decoder_depth must be >= 0")
        if self.stem not in STEMS:
            out.append(f"unknown stem {self.stem!r}; choose one of {sorted(STEMS)}")
        return out


def st_transformer(cfg: FrameGridConfig, depth: int) -> STTransformer:
    return STTransformer(
        cfg.width,
        depth,
        cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        qk_norm=cfg.qk_norm,
        backend=cfg.attention,
    )


class ResBlock(nn.Module):
    """Pre-activation 3x3 residual block on one frame (B, C, H, W); no norm layer, which would
    cost more than the convs at these widths on CPU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class ConvStem(nn.Module):
    """frames (B, T, C, H, W) -> tokens (B, T, h*w, width) by log2(patch) stride-2 convs, each
    followed by a residual block; channels end at `conv_width` on the grid."""

    def __init__(self, cfg: FrameGridConfig, conv_width: int) -> None:
        super().__init__()
        stages = int(math.log2(cfg.patch_size))
        layers: list[nn.Module] = []
        ch_in = cfg.channels
        for i in range(stages):
            ch = conv_width >> (stages - 1 - i)
            layers += [nn.Conv2d(ch_in, ch, 4, stride=2, padding=1), ResBlock(ch)]
            ch_in = ch
        layers += [nn.SiLU(), nn.Conv2d(ch_in, cfg.width, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, frames_BTCHW: Tensor) -> Tensor:
        x = self.net(rearrange(frames_BTCHW, "b t c h w -> (b t) c h w"))
        return rearrange(x, "(b t) d h w -> b t (h w) d", b=frames_BTCHW.shape[0])


class ConvHead(nn.Module):
    """tokens (B, T, h*w, width) -> frames (B, T, C, H, W): a residual block and a 2x
    pixel-shuffle upsampling per stage, halving channels from `conv_width`."""

    def __init__(self, cfg: FrameGridConfig, conv_width: int) -> None:
        super().__init__()
        self.grid = cfg.grid
        ch = conv_width
        layers: list[nn.Module] = [nn.Conv2d(cfg.width, ch, 1)]
        for _ in range(int(math.log2(cfg.patch_size))):
            layers += [ResBlock(ch), nn.Conv2d(ch, 2 * ch, 3, padding=1), nn.PixelShuffle(2)]
            ch //= 2
        layers += [ResBlock(ch), nn.SiLU(), nn.Conv2d(ch, cfg.channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x_BTND: Tensor) -> Tensor:
        x = rearrange(x_BTND, "b t (h w) d -> (b t) d h w", h=self.grid)
        return rearrange(self.net(x), "(b t) c h w -> b t c h w", b=x_BTND.shape[0])


class PatchStem(nn.Module):
    """Genie's linear patch embedding: each p x p x C patch -> one width-d token."""

    def __init__(self, cfg: FrameGridConfig, conv_width: int = 0) -> None:
        super().__init__()
        self.patch = cfg.patch_size
        self.proj = nn.Linear(cfg.patch_size**2 * cfg.channels, cfg.width)

    def forward(self, frames_BTCHW: Tensor) -> Tensor:
        p = self.patch
        patches = rearrange(frames_BTCHW, "b t c (h p1) (w p2) -> b t (h w) (p1 p2 c)", p1=p, p2=p)
        return self.proj(patches)


class PatchHead(nn.Module):
    def __init__(self, cfg: FrameGridConfig, conv_width: int = 0) -> None:
        super().__init__()
        self.patch, self.grid = cfg.patch_size, cfg.grid
        self.proj = nn.Linear(cfg.width, cfg.patch_size**2 * cfg.channels)

    def forward(self, x_BTND: Tensor) -> Tensor:
        p = self.patch
        return rearrange(
            self.proj(x_BTND),
            "b t (h w) (p1 p2 c) -> b t c (h p1) (w p2)",
            h=self.grid,
            p1=p,
            p2=p,
        )


# stem name -> (stem, head); each built as cls(cfg, conv_width) (patch stems ignore the width)
STEMS: dict[str, tuple[Callable[..., nn.Module], Callable[..., nn.Module]]] = {
    "conv": (ConvStem, ConvHead),
    "patch": (PatchStem, PatchHead),
}
