"""Spatiotemporal (ST) transformer blocks, shared by the video tokenizer and the dynamics model.

A video is a grid of tokens x (B, T, N, D): T frames of N = h * w tokens of width D. One ST block
attends among the N tokens of each frame, then causally over time at each of the N positions,
then applies an MLP, each pre-norm and residual. Attention therefore costs O(T N^2 + N T^2)
instead of O((T N)^2), and frame t never sees frames after t.

References: Bruce et al. 2024, "Genie: Generative Interactive Environments" (ST-transformer,
ST-ViViT); Xu et al. 2020, "Spatial-temporal transformer networks" (factorised attention).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from einops import rearrange
from torch import Tensor, nn

from worldsim.nn.attention import KeyValue, MultiHeadAttention


class MLP(nn.Sequential):
    def __init__(self, dim: int, ratio: float) -> None:
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class STBlock(nn.Module):
    """Spatial attention -> (causal) temporal attention -> MLP on x (B, T, N, D)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        qk_norm: bool = True,
        backend: str = "auto",
        causal_time: bool = True,
    ) -> None:
        super().__init__()
        self.norm_space = nn.LayerNorm(dim)
        self.space = MultiHeadAttention(dim, num_heads, qk_norm=qk_norm, backend=backend)
        self.norm_time = nn.LayerNorm(dim)
        self.time = MultiHeadAttention(
            dim, num_heads, causal=causal_time, qk_norm=qk_norm, backend=backend
        )
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x_BTND: Tensor, past: KeyValue | None = None) -> Tensor:
        return self.forward_with_kv(x_BTND, past)[0]

    def forward_with_kv(
        self, x_BTND: Tensor, past: KeyValue | None = None
    ) -> tuple[Tensor, KeyValue]:
        """`past` holds the temporal keys/values of earlier frames, batched as (B * N, heads,
        T_past, head_dim); the new frames are then frames T_past .. T_past + T - 1."""
        b = x_BTND.shape[0]
        h = rearrange(self.norm_space(x_BTND), "b t n d -> (b t) n d")
        x_BTND = x_BTND + rearrange(self.space(h), "(b t) n d -> b t n d", b=b)
        h = rearrange(self.norm_time(x_BTND), "b t n d -> (b n) t d")
        h, kv = self.time.forward_with_kv(h, past)
        x_BTND = x_BTND + rearrange(h, "(b n) t d -> b t n d", b=b)
        return x_BTND + self.mlp(self.norm_mlp(x_BTND)), kv


class STTransformer(nn.Module):
    """`depth` ST blocks and a final LayerNorm: (B, T, N, D) -> (B, T, N, D)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        qk_norm: bool = True,
        backend: str = "auto",
        causal_time: bool = True,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            STBlock(
                dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                qk_norm=qk_norm,
                backend=backend,
                causal_time=causal_time,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x_BTND: Tensor) -> Tensor:
        for block in self.blocks:
            x_BTND = block(x_BTND)
        return self.norm(x_BTND)

    def forward_with_kv(
        self, x_BTND: Tensor, past: Sequence[KeyValue] | None = None
    ) -> tuple[Tensor, list[KeyValue]]:
        """Continue from per-block temporal caches `past` (one per block, or None for a fresh
        start); returns the output and the caches extended by these frames."""
        if past is not None and len(past) != len(self.blocks):
            raise ValueError(f"past has {len(past)} caches for {len(self.blocks)} blocks")
        caches = []
        for i, block in enumerate(self.blocks):
            x_BTND, kv = cast(STBlock, block).forward_with_kv(
                x_BTND, None if past is None else past[i]
            )
            caches.append(kv)
        return self.norm(x_BTND), caches
