"""Multi-head self-attention with a kernel ("backend") chosen by name.

Every worldsim transformer attends through `MultiHeadAttention`, so one config string switches a
whole model between PyTorch SDPA (FlashAttention / memory-efficient kernels on CUDA, a fused kernel
on CPU), xformers, and the plain-math reference the tests check the fast kernels against.

Keys and values can be extended with cached ones (`past`), which is what a KV-cached, one frame at
a time inference engine needs from the causal temporal attention. Causal masks are aligned
bottom-right: the last query sees every key, so a block of new queries continues a cache.

References: Dehghani et al. 2023, "Scaling Vision Transformers to 22B Parameters" (QK-norm, used
by Genie: Bruce et al. 2024, "Genie: Generative Interactive Environments").
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

# q, k, v: (B, heads, L, head_dim), causal -> (B, heads, Lq, head_dim)
AttentionFn = Callable[[Tensor, Tensor, Tensor, bool], Tensor]


class KeyValue(NamedTuple):
    """Keys and values of the positions attended so far, after QK-norm."""

    key: Tensor  # (B, heads, L, head_dim)
    value: Tensor  # (B, heads, L, head_dim)


def causal_mask(len_q: int, len_k: int, device: torch.device) -> Tensor:
    """(Lq, Lk) bool, True where query i may attend key j: query i sits at position Lk - Lq + i."""
    return torch.ones(len_q, len_k, dtype=torch.bool, device=device).tril(diagonal=len_k - len_q)


def reference_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    """softmax(QK^T / sqrt(d)) V written out, the ground truth for the fused kernels."""
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    if causal:
        mask = causal_mask(q.shape[-2], k.shape[-2], q.device)
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    len_q, len_k = q.shape[-2], k.shape[-2]
    if not causal or len_q == 1:  # one new query sees the whole past: no mask needed
        return F.scaled_dot_product_attention(q, k, v)
    if len_q == len_k:  # is_causal lets SDPA keep its flash kernels
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    # SDPA's is_causal aligns top-left when Lq != Lk; a cache continuation needs bottom-right.
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(len_q, len_k, q.device))


def xformers_available() -> bool:
    return importlib.util.find_spec("xformers") is not None


def xformers_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    from xformers.ops import memory_efficient_attention
    from xformers.ops.fmha.attn_bias import LowerTriangularFromBottomRightMask

    # xformers wants (B, L, heads, head_dim).
    q, k, v = (rearrange(t, "b h l d -> b l h d") for t in (q, k, v))
    bias = LowerTriangularFromBottomRightMask() if causal else None
    out = memory_efficient_attention(q, k, v, attn_bias=bias)
    return rearrange(out, "b l h d -> b h l d")


def auto_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    """xformers on CUDA when installed (it can dispatch to FlashAttention-3 on Hopper), else SDPA,
    which already picks the fastest kernel PyTorch has for the device."""
    if q.is_cuda and xformers_available():
        return xformers_attention(q, k, v, causal)
    return sdpa_attention(q, k, v, causal)


ATTENTION_BACKENDS: dict[str, AttentionFn] = {
    "auto": auto_attention,
    "sdpa": sdpa_attention,
    "xformers": xformers_attention,
    "reference": reference_attention,
}


def get_attention_backend(name: str) -> AttentionFn:
    """The kernel named `name`; raises at model construction, not at the first forward."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(
            f"unknown attention backend {name!r}; choose one of {sorted(ATTENTION_BACKENDS)}"
        )
    if name == "xformers" and not xformers_available():
        raise ImportError(
            "attention backend 'xformers' needs the xformers package (pip install -e '.[gpu]' on "
            "a CUDA machine); use 'sdpa' or 'auto' otherwise"
        )
    return ATTENTION_BACKENDS[name]


class MultiHeadAttention(nn.Module):
    """Self-attention over the middle axis of x (B, L, D), optionally causal, optionally
    continuing cached keys/values of earlier positions."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        causal: bool = False,
        qk_norm: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.causal = causal
        self.backend = backend
        self.attend = get_attention_backend(backend)
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        # QK-norm bounds the attention logits, which keeps wide models stable at high lr.
        self.q_norm: nn.Module = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm: nn.Module = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()

    def forward(self, x_BLD: Tensor, past: KeyValue | None = None) -> Tensor:
        return self.forward_with_kv(x_BLD, past)[0]

    def forward_with_kv(
        self, x_BLD: Tensor, past: KeyValue | None = None
    ) -> tuple[Tensor, KeyValue]:
        """Output (B, L, D) and the keys/values of past + these L positions for the next call."""
        qkv = rearrange(
            self.qkv(x_BLD), "b l (three h d) -> three b h l d", three=3, h=self.num_heads
        )
        q, k, v = self.q_norm(qkv[0]), self.k_norm(qkv[1]), qkv[2]
        # LayerNorm runs in fp32 under autocast; the kernels want one dtype.
        q, k = q.to(v.dtype), k.to(v.dtype)
        if past is not None:
            k = torch.cat([past.key.to(k.dtype), k], dim=2)
            v = torch.cat([past.value.to(v.dtype), v], dim=2)
        out = self.attend(q, k, v, self.causal)
        return self.proj(rearrange(out, "b h l d -> b l (h d)")), KeyValue(k, v)
