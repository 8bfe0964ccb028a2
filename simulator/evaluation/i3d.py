"""The Kinetics-400 Inception-I3D network that the standard FVD uses as its feature extractor, in
PyTorch, layer for layer as DeepMind's TF-Hub module `i3d-kinetics-400/1`.

What "exactly" takes: TensorFlow's SAME padding (the odd pixel goes after, not before, and max
pooling pads with -inf), Sonnet v1 batch norm (no scale, offset only, epsilon 1e-3, inference
statistics), ReLU after every batch norm but the logits', a VALID (2, 7, 7) average pool, and
logits averaged over the remaining time steps. Input: (B, T, H, W, 3) in [-1, 1], 224x224 frames.
Weights: simulator.evaluation.i3d_weights.

References: Carreira & Zisserman 2017, "Quo Vadis, Action Recognition? A New Model and the
Kinetics Dataset" (I3D); Unterthiner et al. 2018, "Towards Accurate Generative Models of Video:
A New Metric & Challenges" (FVD on I3D logits).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

NUM_CLASSES = 400
BN_EPSILON = 1e-3  # Sonnet v1's default

# name -> output channels of its branches: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | pool -> 1x1
MIXED: dict[str, tuple[int, int, int, int, int, int]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


def same_padding(x_BCTHW: Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> list[int]:
    """TensorFlow's SAME padding for a 3-D window, in F.pad's order (W, H, T; before, after)."""
    pads: list[int] = []
    for size, k, s in zip(
        reversed(x_BCTHW.shape[2:]), reversed(kernel), reversed(stride), strict=True
    ):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return pads


def max_pool_same(x: Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> Tensor:
    padded = F.pad(x, same_padding(x, kernel, stride), value=-math.inf)
    return F.max_pool3d(padded, kernel, stride)


class Unit3D(nn.Module):
    """Conv3d (SAME, no bias) -> Sonnet batch norm (offset only) -> ReLU; the logits layer is a
    biased conv alone."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, logits: bool = False
    ) -> None:
        super().__init__()
        self.kernel, self.stride = (kernel,) * 3, (stride,) * 3
        self.logits = logits
        self.conv = nn.Conv3d(c_in, c_out, kernel, stride, bias=logits)
        if not logits:
            self.bn = SonnetBatchNorm(c_out)

    def forward(self, x_BCTHW: Tensor) -> Tensor:
        x = self.conv(F.pad(x_BCTHW, same_padding(x_BCTHW, self.kernel, self.stride)))
        return x if self.logits else F.relu(self.bn(x))


class SonnetBatchNorm(nn.Module):
    """Inference batch norm with an offset and no scale, as Sonnet v1 built I3D."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.running_mean: Tensor
        self.running_var: Tensor
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, bias=self.bias, training=False, eps=BN_EPSILON
        )


class InceptionModule(nn.Module):
    def __init__(self, c_in: int, c: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.Branch_0_Conv3d_0a_1x1 = Unit3D(c_in, c[0])
        self.Branch_1_Conv3d_0a_1x1 = Unit3D(c_in, c[1])
        self.Branch_1_Conv3d_0b_3x3 = Unit3D(c[1], c[2], kernel=3)
        self.Branch_2_Conv3d_0a_1x1 = Unit3D(c_in, c[3])
        self.Branch_2_Conv3d_0b_3x3 = Unit3D(c[3], c[4], kernel=3)
        self.Branch_3_Conv3d_0b_1x1 = Unit3D(c_in, c[5])
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: Tensor) -> Tensor:
        branches = [
            self.Branch_0_Conv3d_0a_1x1(x),
            self.Branch_1_Conv3d_0b_3x3(self.Branch_1_Conv3d_0a_1x1(x)),
            self.Branch_2_Conv3d_0b_3x3(self.Branch_2_Conv3d_0a_1x1(x)),
            self.Branch_3_Conv3d_0b_1x1(max_pool_same(x, (3, 3, 3), (1, 1, 1))),
        ]
        return torch.cat(branches, dim=1)


class InceptionI3d(nn.Module):
    """Video (B, T, 224, 224, 3) in [-1, 1] -> Kinetics-400 logits (B, 400), the FVD features.
    T >= 9 frames (the standard FVD uses 16)."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, kernel=7, stride=2)
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, kernel=3)
        channels = 192
        self.mixed = nn.ModuleDict()
        for name, widths in MIXED.items():
            block = InceptionModule(channels, widths)
            self.mixed[name] = block
            channels = block.out_channels
        self.Logits_Conv3d_0c_1x1 = Unit3D(channels, NUM_CLASSES, logits=True)

    def forward(self, video_BTHWC: Tensor) -> Tensor:
        x = rearrange(video_BTHWC, "b t h w c -> b c t h w")
        x = self.Conv3d_1a_7x7(x)
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_2a_3x3
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x))
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_3a_3x3
        for name, block in self.mixed.items():
            if name == "Mixed_4b":
                x = max_pool_same(x, (3, 3, 3), (2, 2, 2))  # MaxPool3d_4a_3x3
            elif name == "Mixed_5b":
                x = max_pool_same(x, (2, 2, 2), (2, 2, 2))  # MaxPool3d_5a_2x2
            x = block(x)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # VALID: (T/8 - 1, 1, 1) positions
        logits_BCT = self.Logits_Conv3d_0c_1x1(x).flatten(3).squeeze(3)
        return logits_BCT.mean(dim=2)
