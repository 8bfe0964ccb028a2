"""Multi-head self-attention with a kernel ("backend") chosen by name.

Every worldsim transformer attends through `MultiHeadAttention`, so one config string switches a
whole model between PyTorch SDPA (FlashAttention / memory-efficient kernels on CUDA, a fused kernel
on CPU), xformers, flash-attn, and the plain-math reference the tests check the fast kernels
against. "auto" times the installed fused kernels once per device and dtype and keeps the fastest;
`check_backends_agree` compares every available kernel with the fp32 reference.

Keys and values can be extended with cached ones (`past`, or preallocated buffers through
`forward_into`), which is what a KV-cached, one frame at a time inference engine needs from the
causal temporal attention. Causal masks are aligned bottom-right: the last query sees every key,
so a block of new queries continues a cache.

References: Dehghani et al. 2023, "Scaling Vision Transformers to 22B Parameters" (QK-norm, used
by Genie: Bruce et al. 2024, "Genie: Generative Interactive Environments").
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass
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


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def flash_attn_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    from flash_attn import flash_attn_func

    # flash-attn wants (B, L, heads, head_dim) in fp16/bf16 on CUDA; since 2.1 its causal mask is
    # aligned bottom-right, as a cache continuation needs.
    q, k, v = (rearrange(t, "b h l d -> b l h d") for t in (q, k, v))
    out = flash_attn_func(q, k, v, causal=causal)
    return rearrange(out, "b l h d -> b h l d")


# The kernels "auto" chooses among; "reference" is never chosen (it materialises every score).
KERNELS: dict[str, AttentionFn] = {
    "sdpa": sdpa_attention,
    "xformers": xformers_attention,
    "flash_attn": flash_attn_attention,
    "reference": reference_attention,
}
# (device type, device index, dtype) -> the kernel "auto" measured fastest there.
_AUTO_CHOICE: dict[tuple[str, int | None, torch.dtype], str] = {}


def backend_supports(name: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether kernel `name` is installed and runs on `device` in `dtype`."""
    if name in ("sdpa", "reference"):
        return True
    if device.type != "cuda":
        return False
    if name == "xformers":
        return xformers_available()
    return flash_attn_available() and dtype in (torch.float16, torch.bfloat16)


def available_backends(device: torch.device | str, dtype: torch.dtype) -> list[str]:
    device = torch.device(device)
    return [name for name in KERNELS if backend_supports(name, device, dtype)]


def fastest_backend(q: Tensor, k: Tensor, v: Tensor, causal: bool, repeats: int = 3) -> str:
    """The fused kernel with the lowest median time on these inputs (one warm-up call each)."""
    candidates = [n for n in available_backends(q.device, q.dtype) if n != "reference"]
    if len(candidates) == 1:
        return candidates[0]
    times = {}
    for name in candidates:
        try:
            KERNELS[name](q, k, v, causal)
            samples = []
            for _ in range(repeats):
                _synchronize(q.device)
                t0 = time.perf_counter()
                KERNELS[name](q, k, v, causal)
                _synchronize(q.device)
                samples.append(time.perf_counter() - t0)
        except (RuntimeError, ValueError, NotImplementedError):  # shape or dtype it lacks
            continue
        times[name] = sorted(samples)[len(samples) // 2]
    return min(times, key=times.__getitem__) if times else "sdpa"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def auto_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    """The fastest installed kernel for this device and dtype, timed on the first call there and
    remembered for the process (so a run never switches kernels half way). On CPU that is SDPA,
    which already picks the fastest kernel PyTorch has for the device."""
    key = (q.device.type, q.device.index, q.dtype)
    name = _AUTO_CHOICE.get(key)
    if name is None:
        name = _AUTO_CHOICE[key] = fastest_backend(q, k, v, causal)
    return KERNELS[name](q, k, v, causal)


ATTENTION_BACKENDS: dict[str, AttentionFn] = {"auto": auto_attention, **KERNELS}
PACKAGES = {"xformers": "xformers", "flash_attn": "flash-attn"}


def get_attention_backend(name: str) -> AttentionFn:
    """The kernel named `name`; raises at model construction, not at the first forward."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(
            f"unknown attention backend {name!r}; choose one of {sorted(ATTENTION_BACKENDS)}"
        )
    if name in PACKAGES and importlib.util.find_spec(name) is None:
        raise ImportError(
            f"attention backend {name!r} needs the {PACKAGES[name]} package (pip install -e "
            "'.[gpu]' on a CUDA machine); use 'sdpa' or 'auto' otherwise"
        )
    return ATTENTION_BACKENDS[name]


# bf16 keeps 8 significant bits (~0.4% per rounding) and attention outputs are averages of values
# of unit scale: SDPA lands within ~7e-3 of the fp32 reference on CPU, the reference itself in
# bf16 (which rounds every score) within ~1.5e-2.
BF16_TOLERANCE = 3e-2
# (queries, keys, causal): spatial attention of a 16x16 grid, a causal clip, and cache
# continuations with one and with four new positions after sixteen cached ones.
AGREEMENT_CASES = ((256, 256, False), (16, 16, True), (1, 17, True), (4, 20, True))


@dataclass
class BackendAgreement:
    device: str
    dtype: str
    tolerance: float
    max_errors: dict[str, float]  # backend -> worst |output - fp32 reference| over the cases

    @property
    def ok(self) -> bool:
        return all(err <= self.tolerance for err in self.max_errors.values())

    def render(self) -> str:
        errs = ", ".join(f"{name} {err:.1e}" for name, err in self.max_errors.items())
        verdict = "agree" if self.ok else "DISAGREE"
        return (
            f"attention backends on {self.device} in {self.dtype} {verdict} with the fp32 "
            f"reference (tolerance {self.tolerance:g}): {errs}"
        )


def check_backends_agree(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    tolerance: float = BF16_TOLERANCE,
    seed: int = 0,
) -> BackendAgreement:
    """Run every backend available on `device` on random inputs in `dtype` and compare each
    with the plain-math reference computed in fp32 from the same rounded inputs."""
    gen = torch.Generator().manual_seed(seed)
    errors: dict[str, float] = {}
    for len_q, len_k, causal in AGREEMENT_CASES:
        q, k, v = (
            torch.randn(2, 4, n, 64, generator=gen).to(device, dtype) for n in (len_q, len_k, len_k)
        )
        expected = reference_attention(q.float(), k.float(), v.float(), causal)
        for name in available_backends(device, dtype):
            err = float((KERNELS[name](q, k, v, causal).float() - expected).abs().max())
            errors[name] = max(errors.get(name, 0.0), err)
    return BackendAgreement(str(device), str(dtype).removeprefix("torch."), tolerance, errors)


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
        # Causal attention one query at a time (set_query_by_query): see `_attend`.
        self.query_by_query = False

    def forward(self, x_BLD: Tensor, past: KeyValue | None = None) -> Tensor:
        return self.forward_with_kv(x_BLD, past)[0]

    def forward_with_kv(
        self, x_BLD: Tensor, past: KeyValue | None = None
    ) -> tuple[Tensor, KeyValue]:
        """Output (B, L, D) and the keys/values of past + these L positions for the next call."""
        q, k, v = self._project(x_BLD)
        if past is not None:
            k = torch.cat([past.key.to(k.dtype), k], dim=2)
            v = torch.cat([past.value.to(v.dtype), v], dim=2)
        out = self._attend(q, k, v)
        return self.proj(rearrange(out, "b h l d -> b l (h d)")), KeyValue(k, v)

    def forward_into(
        self, x_BLD: Tensor, key_buffer: Tensor, value_buffer: Tensor, length: int
    ) -> Tensor:
        """Output (B, L, D) of these L positions after `length` cached ones: their keys/values
        are written to slots length..length+L-1 of the preallocated buffers (B, heads, capacity,
        head_dim) and the queries attend over slots 0..length+L-1."""
        stop = length + x_BLD.shape[1]
        if stop > key_buffer.shape[2]:
            raise ValueError(
                f"the cache holds {key_buffer.shape[2]} positions; {x_BLD.shape[1]} more do not "
                f"fit after {length}"
            )
        q, k, v = self._project(x_BLD)
        key_buffer[:, :, length:stop] = k
        value_buffer[:, :, length:stop] = v
        keys, values = key_buffer[:, :, :stop], value_buffer[:, :, :stop]
        out = self._attend(q.to(keys.dtype), keys, values).to(v.dtype)
        return self.proj(rearrange(out, "b h l d -> b l (h d)"))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The backend on (B, heads, L, head_dim) inputs. With `query_by_query`, causal
        attention of several queries runs one query at a time against exactly the keys it may
        see: fused kernels round differently for one query and for several, so only then does a
        position's output not depend on how many positions are computed together, and a KV-cached
        engine adding one frame at a time reproduces the full pass bit for bit."""
        len_q, len_k = q.shape[2], k.shape[2]
        if not (self.causal and self.query_by_query and len_q > 1):
            return self.attend(q, k, v, self.causal)
        first = len_k - len_q
        rows = [
            self.attend(
                q[:, :, i : i + 1], k[:, :, : first + i + 1], v[:, :, : first + i + 1], False
            )
            for i in range(len_q)
        ]
        return torch.cat(rows, dim=2)

    def _project(self, x_BLD: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys (both QK-normed) and values, each (B, heads, L, head_dim)."""
        qkv = rearrange(
            self.qkv(x_BLD), "b l (three h d) -> three b h l d", three=3, h=self.num_heads
        )
        q, k, v = self.q_norm(qkv[0]), self.k_norm(qkv[1]), qkv[2]
        # LayerNorm runs in fp32 under autocast; the kernels want one dtype.
        return q.to(v.dtype), k.to(v.dtype), v


def set_query_by_query(model: nn.Module, enabled: bool = True) -> int:
    """Run every causal attention layer of `model` one query at a time (see
    `MultiHeadAttention._attend`); for inference engines that must match a full pass exactly.
    Returns how many layers it set."""
    layers = [m for m in model.modules() if isinstance(m, MultiHeadAttention) and m.causal]
    for layer in layers:
        layer.query_by_query = enabled
    return len(layers)


def set_attention_backend(model: nn.Module, name: str) -> int:
    """Switch every attention layer of `model` to backend `name`; returns how many it switched.
    The weights are untouched, so a checkpoint trained with one kernel runs with any other."""
    attend = get_attention_backend(name)
    layers = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    for layer in layers:
        layer.backend, layer.attend = name, attend
    return len(layers)
