"""Preallocated temporal key/value caches and the sliding-window rule for frame-by-frame inference.

A model that is causal in time (the tokenizer's decoder, the dynamics model) can produce frame t
from the cached temporal keys/values of frames < t, at the cost of one frame. `KVCache` holds those
keys/values for every ST block in buffers allocated once for `capacity` frames, because on CPU the
fixed costs of growing caches by concatenation dominate a step (measured on 2 cores: a naive
cached step of an 8-block, width-256 model spent most of its ~65 ms per MaskGIT step there).

A cache behaves as a value: `STTransformer.forward_cached` writes the new frames' keys/values into
the slots after `length` and returns a cache of the new length; the cache it was given still reads
its own `length` frames. Slots past `length` are scratch, which is what lets MaskGIT run its
iterations on a new frame without keeping their keys/values. Several caches share one storage until
two of them would write the same slot (stepping twice from one state, or a retry after a failed
step): the second one copies its frames out first (copy-on-write), so no cache is ever corrupted.

The window rule: both models learn absolute temporal positions for `max_frames` frames, so frame k
of a long rollout is produced in the window of frames [start, k] re-based to positions 0..k-start.
When a new frame would not fit, `start` jumps by `hop` frames and the caches are rebuilt once from
the kept frames. `frames_to_drop` is that rule: the engine and the tokenizer's step decoder
apply it to their windows, and the samplers use `window_start`, its closed form (a test checks
the two agree), so the cached and the uncached paths see the same context at every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def check_hop(hop: int, max_frames: int) -> None:
    if not 1 <= hop < max_frames:
        raise ValueError(f"window hop must lie in 1..max_frames-1 = 1..{max_frames - 1}, got {hop}")


def frames_to_drop(window: int, max_frames: int, hop: int) -> int:
    """The window rule: how many of a window's oldest frames go before one more frame joins a
    window of `window` frames. None while it fits `max_frames`; `hop` frames once it is full."""
    check_hop(hop, max_frames)
    return hop if window + 1 > max_frames else 0


def window_start(frame: int, max_frames: int, hop: int) -> int:
    """First frame of the window in which frame `frame` (counted from a rollout's first frame)
    is produced: `frames_to_drop` applied frame after frame from the rollout's start, in closed
    form (the smallest multiple of `hop` that leaves at most `max_frames` frames in [start,
    frame]) so a long rollout pays O(1) per frame; tests/worldsim/test_kv_cache.py checks that
    both agree."""
    check_hop(hop, max_frames)
    excess = frame + 1 - max_frames
    return 0 if excess <= 0 else -(-excess // hop) * hop


class _Storage:
    """Buffers shared by the caches of one lineage; `committed` frames are in use by some cache."""

    def __init__(self, keys: list[Tensor], values: list[Tensor], committed: int) -> None:
        self.keys, self.values, self.committed = keys, values, committed


@dataclass(frozen=True)
class KVCache:
    """Temporal keys/values of `length` frames for each block, in buffers of (batch * tokens,
    heads, capacity, head_dim)."""

    storage: _Storage
    length: int

    @classmethod
    def empty(
        cls,
        layers: int,
        shape: tuple[int, int, int, int],
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> KVCache:
        """A cache of `layers` blocks with buffers shaped `shape` = (batch * tokens, heads,
        capacity, head_dim)."""
        keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(layers)]
        values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(layers)]
        return cls(_Storage(keys, values, 0), 0)

    @property
    def layers(self) -> int:
        return len(self.storage.keys)

    @property
    def capacity(self) -> int:
        return self.storage.keys[0].shape[2] if self.storage.keys else 0

    def layer(self, i: int) -> tuple[Tensor, Tensor]:
        """The key and value buffers of block i (all `capacity` slots)."""
        return self.storage.keys[i], self.storage.values[i]

    def writable(self) -> KVCache:
        """This cache, safe to write past `length`: its own storage when no other cache uses the
        slots after `length`, else a copy of its `length` frames."""
        if self.storage.committed == self.length:
            return self
        n = self.length
        keys = [_copy_prefix(k, n) for k in self.storage.keys]
        values = [_copy_prefix(v, n) for v in self.storage.values]
        return KVCache(_Storage(keys, values, n), n)

    @classmethod
    def stack(cls, caches: list[KVCache]) -> KVCache:
        """One cache of the worlds of `caches` (same length and capacity), in that order: the
        buffers concatenated along their first, (batch * tokens), axis. A copy: the caches
        given keep their storage."""
        lengths = {(c.length, c.capacity, c.layers) for c in caches}
        if len(lengths) != 1:
            raise ValueError(f"only caches of one (length, capacity, layers) stack, got {lengths}")
        keys = [torch.cat([c.storage.keys[i] for c in caches]) for i in range(caches[0].layers)]
        values = [torch.cat([c.storage.values[i] for c in caches]) for i in range(caches[0].layers)]
        return cls(_Storage(keys, values, caches[0].length), caches[0].length)

    def rows(self, start: int, stop: int) -> KVCache:
        """The cache of buffer rows start..stop (one world's tokens of a stacked cache): views
        with their own slot bookkeeping, so writing past `length` in one world's rows never
        touches another's."""
        keys = [k[start:stop] for k in self.storage.keys]
        values = [v[start:stop] for v in self.storage.values]
        return KVCache(_Storage(keys, values, self.length), self.length)

    def advanced(self, frames: int) -> KVCache:
        """The cache that also holds the `frames` frames just written after `length`."""
        if self.storage.committed != self.length:
            raise RuntimeError("advanced() on a cache whose slots another cache owns")
        self.storage.committed = self.length + frames
        return KVCache(self.storage, self.length + frames)


def _copy_prefix(buffer: Tensor, n: int) -> Tensor:
    out = torch.empty_like(buffer)
    out[:, :, :n] = buffer[:, :, :n]
    return out


def activation_dtype(device: torch.device, param_dtype: torch.dtype) -> torch.dtype:
    """dtype the keys/values come out in: the autocast dtype inside autocast, else the weights'."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return param_dtype
