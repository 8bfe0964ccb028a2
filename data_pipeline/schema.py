"""The shard sample schema: the contract between the data pipeline and every model that reads it.

One webdataset sample is one clip:

| member          | content                                                                     |
| --------------- | --------------------------------------------------------------------------- |
| `__key__`       | `<source uid>-<clip index:06d>`, unique within a dataset                    |
| `frames.npy`    | uint8 array (T, H, W, 3), RGB                                               |
| `actions.npy`   | present only when actions are known: int64 (T,) for a discrete space or     |
|                 | float32 (T, D) for a continuous one. `actions[t]` is the action taken after |
|                 | frame t was observed, i.e. the one that leads to frame t+1.                 |
| `rewards.npy`   | driving episodes only: float32 (T,), the reward for actions[t]              |
| `ends.npy`      | driving episodes only: bool (T,), the episode ended after actions[t]        |
| `meta.json`     | source, start_time (s), fps, license/origin tag, action_space, and for game |
|                 | episodes the game, level seed and episode step of frame 0                   |

Raw `.npy` rather than mp4 inside shards: decoding npy is a memcpy, which is what lets one CPU
core stream thousands of 64x64 frames per second to the trainer.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

FRAMES = "frames.npy"
ACTIONS = "actions.npy"
REWARDS = "rewards.npy"
ENDS = "ends.npy"
META = "meta.json"


@dataclass(frozen=True)
class ActionSpace:
    """Describes the actions stored with clips; recorded in every sample and in the manifest."""

    type: str  # "discrete" | "continuous"
    n: int | None = None  # number of discrete actions
    shape: tuple[int, ...] | None = None  # continuous action shape, e.g. (2,) for steer, speed
    # Human-readable names: of each discrete action, or of each continuous dimension.
    names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.type == "discrete":
            if not self.n or self.n < 1:
                raise ValueError(f"a discrete action space needs n >= 1, got n={self.n}")
        elif self.type == "continuous":
            if not self.shape:
                raise ValueError("a continuous action space needs a shape")
        else:
            raise ValueError(
                f"unknown action space type {self.type!r}; use 'discrete' or 'continuous'"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ActionSpace | None:
        if d is None:
            return None
        return cls(
            type=d["type"],
            n=d.get("n"),
            shape=tuple(d["shape"]) if d.get("shape") is not None else None,
            names=tuple(d["names"]) if d.get("names") is not None else None,
        )


@dataclass
class Clip:
    """One training clip, as every source yields it and every shard stores it."""

    frames: np.ndarray  # (T, H, W, 3) uint8
    actions: np.ndarray | None  # (T,) int64 or (T, D) float32; None when unknown
    meta: dict[str, Any] = field(default_factory=dict)
    rewards: np.ndarray | None = None  # (T,) float32: the reward for actions[t]
    ends: np.ndarray | None = None  # (T,) bool: the episode ended after actions[t]

    def __post_init__(self) -> None:
        f = self.frames
        if f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3:
            raise ValueError(f"clip frames must be uint8 (T, H, W, 3), got {f.dtype} {f.shape}")
        for name in ("actions", "rewards", "ends"):
            values = getattr(self, name)
            if values is not None and len(values) != len(f):
                raise ValueError(
                    f"clip has {len(f)} frames but {len(values)} {name}; they must match"
                )


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def encode_sample(key: str, clip: Clip) -> dict[str, Any]:
    """Clip -> the dict webdataset's TarWriter writes (bytes values, so encoding is explicit)."""
    sample: dict[str, Any] = {
        "__key__": key,
        FRAMES: _npy_bytes(np.ascontiguousarray(clip.frames)),
        META: json.dumps(clip.meta, sort_keys=True).encode(),
    }
    for member, values in ((ACTIONS, clip.actions), (REWARDS, clip.rewards), (ENDS, clip.ends)):
        if values is not None:
            sample[member] = _npy_bytes(np.ascontiguousarray(values))
    return sample


def decode_sample(sample: dict[str, Any]) -> Clip:
    """Raw webdataset sample (bytes values) -> Clip. Raises ValueError on a malformed sample."""
    key = sample.get("__key__", "?")
    if FRAMES not in sample:
        raise ValueError(f"sample {key!r} has no {FRAMES}")
    frames = np.load(io.BytesIO(sample[FRAMES]), allow_pickle=False)
    actions, rewards, ends = (
        np.load(io.BytesIO(sample[m]), allow_pickle=False) if m in sample else None
        for m in (ACTIONS, REWARDS, ENDS)
    )
    meta = json.loads(sample[META]) if META in sample else {}
    return Clip(frames=frames, actions=actions, meta=meta, rewards=rewards, ends=ends)
