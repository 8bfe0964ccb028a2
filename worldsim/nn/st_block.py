"""Spatiotemporal (ST) transformer blocks, shared by the video tokenizer and the dynamics model.

A video is a grid of tokens x (B, T, N, D): T frames of N = h * w tokens of width D. One ST block
attends among the N tokens of each frame, then causally over time at each of the N positions,
then applies an MLP, each pre-norm and residual. Attention therefore costs O(T N^2 + N T^2)
instead of O((T N)^2), and frame t never sees frames after t.

Because time is causal, inference can add frames one at a time: `forward_with_kv` continues from
concatenated temporal keys/values, `forward_cached` from a preallocated `KVCache`
(worldsim/nn/kv_cache.py), which is what the interactive engine steps with.

References: Bruce et al. 2024, "Genie: Generative Interactive Environments" (ST-transformer,
ST-ViViT); Xu et al. 2020, "Spatial-temporal transformer networks" (factorised attention).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from einops import rearrange
from torch import Tensor, nn

from worldsim.nn.attention import KeyValue, MultiHeadAttention
from worldsim.nn.kv_cache import KVCache

# One cache's buffers for one block, and how many frames they hold: (keys, values, length).
CacheSlots = tuple[Tensor, Tensor, int]


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
        x_BTND, h = self._space(x_BTND)
        h, kv = self.time.forward_with_kv(h, past)
        return self._mlp(x_BTND, h), kv

    def forward_into(self, x_BTND: Tensor, slots: Sequence[CacheSlots]) -> Tensor:
        """The new frames after cached ones, whose temporal keys/values sit in preallocated
        buffers (rows, heads, capacity, head_dim); writes the new frames' own keys/values to the
        slots after each cache's `length`. The batch is split in order among `slots`, a cache
        each (its buffers' rows are its worlds' B_i * N tokens): every group attends over its
        own past, so worlds with windows of different lengths step in one pass, and everything
        else (spatial attention, MLP) runs on the whole batch."""
        x_BTND, h = self._space(x_BTND)
        outs, row = [], 0
        for key_buffer, value_buffer, length in slots:
            group, row = h[row : row + key_buffer.shape[0]], row + key_buffer.shape[0]
            outs.append(self.time.forward_into(group, key_buffer, value_buffer, length))
        if row != h.shape[0]:
            raise ValueError(f"the caches hold {row} token rows for a batch of {h.shape[0]}")
        return self._mlp(x_BTND, outs[0] if len(outs) == 1 else torch.cat(outs))

    def _space(self, x_BTND: Tensor) -> tuple[Tensor, Tensor]:
        """Spatial attention with its residual, and the normed input of the temporal attention
        laid out as (B * N, T, D)."""
        b = x_BTND.shape[0]
        h = rearrange(self.norm_space(x_BTND), "b t n d -> (b t) n d")
        x_BTND = x_BTND + rearrange(self.space(h), "(b t) n d -> b t n d", b=b)
        return x_BTND, rearrange(self.norm_time(x_BTND), "b t n d -> (b n) t d")

    def _mlp(self, x_BTND: Tensor, time_out: Tensor) -> Tensor:
        """The temporal attention's residual (output (B * N, T, D)), then the MLP."""
        x_BTND = x_BTND + rearrange(time_out, "(b n) t d -> b t n d", b=x_BTND.shape[0])
        return x_BTND + self.mlp(self.norm_mlp(x_BTND))


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

    def empty_cache(
        self, batch_tokens: int, capacity: int, dtype: torch.dtype, device: torch.device | str
    ) -> KVCache:
        """A temporal KV cache for `capacity` frames of `batch_tokens` = B * N token positions."""
        attn = cast(STBlock, self.blocks[0]).time
        heads = attn.num_heads
        shape = (batch_tokens, heads, capacity, attn.qkv.in_features // heads)
        return KVCache.empty(len(self.blocks), shape, dtype, device)

    def forward_cached(
        self, x_BTND: Tensor, cache: KVCache, *, commit: bool
    ) -> tuple[Tensor, KVCache]:
        """Frames cache.length .. cache.length + T - 1 given the cached earlier ones. With
        `commit` the returned cache also holds the new frames; without, it is `cache` again and
        the new frames' keys/values were scratch (a MaskGIT iteration on a frame not yet final)."""
        out, (cache,) = self.forward_cached_many(x_BTND, [cache], commit=commit)
        return out, cache

    def forward_cached_many(
        self, x_BTND: Tensor, caches: Sequence[KVCache], *, commit: bool
    ) -> tuple[Tensor, list[KVCache]]:
        """`forward_cached` for a batch split in order among `caches` of any lengths (worlds
        whose windows differ): one pass, each group after its own cache's frames."""
        for cache in caches:
            if cache.layers != len(self.blocks):
                raise ValueError(
                    f"the cache has {cache.layers} layers for {len(self.blocks)} blocks"
                )
        caches = [cache.writable() for cache in caches]
        for i, block in enumerate(self.blocks):
            slots = [(*cache.layer(i), cache.length) for cache in caches]
            x_BTND = cast(STBlock, block).forward_into(x_BTND, slots)
        out, t = self.norm(x_BTND), x_BTND.shape[1]
        return out, [cache.advanced(t) if commit else cache for cache in caches]
