"""The actions a player steers a world with: the one object the engine, the app, `worldsim
rollout` and evaluation share, saved in `world.json`.

Three kinds:
- "latent": the latent action model's codes, ids 0..n-1 (Genie's way to steer a world learned
  from video without actions);
- "discrete": a game's action ids, or the effect classes they fall into (`game_actions` maps
  the game's ids to the world's, e.g. CoinRun's 15 keys to 6 effects);
- "continuous": n controls, each a float within [low, high] (CarRacing's steer in [-1, 1], gas
  and brake in [0, 1]).

`tensor` turns what a caller gives (an id, ids, a vector, vectors) into what the dynamics takes,
with one error message for every kind of bad input; `idle` is the action of a player who
touches nothing; `describe` says it in words. Recorded data describes its actions with
`data_pipeline.schema.ActionSpace` (the shard contract); `from_data` turns that into this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from data_pipeline.schema import ActionSpace

ACTION_SPACE_TYPES = ("latent", "discrete", "continuous")


@dataclass
class WorldActionSpace:
    type: str  # one of ACTION_SPACE_TYPES
    n: int  # number of actions (ids 0..n-1), or of continuous controls
    names: list[str] = field(default_factory=list)  # optional label per action id or control
    # For a world steered by a game's effect classes: game action id -> this world's action
    # (e.g. CoinRun's 15 ids -> 6 effects). Empty: the world's ids are the game's.
    game_actions: list[int] = field(default_factory=list)
    low: list[float] = field(default_factory=list)  # continuous: each control's range
    high: list[float] = field(default_factory=list)

    @property
    def continuous(self) -> bool:
        return self.type == "continuous"

    @classmethod
    def from_data(cls, space: ActionSpace, low: list[float], high: list[float]) -> WorldActionSpace:
        """The world's space for actions recorded as `space` (a shard's), with control ranges
        for a continuous one."""
        if space.type == "continuous":
            n = int(np.prod(space.shape or (0,)))
            return cls("continuous", n, list(space.names or ()), low=list(low), high=list(high))
        return cls("discrete", int(space.n or 0), list(space.names or ()))

    def problems(self) -> list[str]:
        out = []
        if self.type not in ACTION_SPACE_TYPES:
            out.append(
                f"action space type must be one of {list(ACTION_SPACE_TYPES)}, got {self.type!r}"
            )
        if self.n < 1:
            out.append(f"action space n must be >= 1, got {self.n}")
        if self.names and len(self.names) != self.n:
            out.append(f"action space has {self.n} actions but {len(self.names)} names")
        if any(not 0 <= a < self.n for a in self.game_actions):
            out.append(f"game_actions must map into 0..{self.n - 1}, got {self.game_actions}")
        if self.continuous and not (len(self.low) == len(self.high) == self.n):
            out.append(f"a continuous space needs low and high for each of its {self.n} controls")
        elif self.continuous and any(lo >= hi for lo, hi in zip(self.low, self.high, strict=True)):
            out.append(f"each control needs low < high, got low {self.low}, high {self.high}")
        return out

    def from_game(self, ids: Any) -> Any:
        """A game's action ids (array or tensor, any shape) -> this world's actions."""
        if not self.game_actions:
            return ids
        if hasattr(ids, "new_tensor"):  # a torch tensor, without importing torch here
            return ids.new_tensor(self.game_actions)[ids]
        return np.asarray(self.game_actions)[np.asarray(ids)]

    def describe(self) -> str:
        if self.continuous:
            names = self.names or [f"control {i}" for i in range(self.n)]
            ranges = zip(names, self.low, self.high, strict=False)
            shown = ", ".join(f"{c} {lo:g}..{hi:g}" for c, lo, hi in ranges)
            return f"{self.n} continuous controls ({shown})"
        kind = "latent actions" if self.type == "latent" else "discrete actions"
        return f"{self.n} {kind} (ids 0..{self.n - 1})"

    def idle(self) -> int | list[float] | None:
        """The action of a player who touches nothing: a continuous space's controls at 0 (or
        the nearest value in range), a discrete one's NOOP; None where no action is named so."""
        if self.continuous:
            return [min(max(0.0, lo), hi) for lo, hi in zip(self.low, self.high, strict=True)]
        upper = [n.upper() for n in self.names]
        return upper.index("NOOP") if "NOOP" in upper else None

    def tensor(self, actions: Any, shape: tuple[int, ...], device: Any) -> torch.Tensor:
        """What the dynamics takes: int64 ids of `shape`, or float32 controls of (*shape, n)
        within their ranges. One id (one vector of controls) stands for every entry."""
        import torch

        try:
            values = actions if isinstance(actions, torch.Tensor) else torch.as_tensor(actions)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"actions must be {self._expected()}, got {actions!r}") from err
        if self.continuous:
            return self._controls(values, shape).to(device)
        if values.numel() == 0:  # an empty list comes out as float, and flat
            values = values.long().reshape(shape) if 0 in shape else values.long()
        if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
            raise ValueError(f"actions must be integer ids, got {values.dtype}")
        if values.ndim == 0:
            values = values.expand(*shape)
        if tuple(values.shape) != tuple(shape):
            raise ValueError(
                f"expected action ids of shape {tuple(shape)}, got {tuple(values.shape)}"
            )
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= self.n):
            bad = int(values.min()) if int(values.min()) < 0 else int(values.max())
            raise ValueError(f"action {bad} is outside the action space: {self.describe()}")
        return values.to(device, torch.long)

    def _controls(self, values: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        import torch

        if values.is_complex() or values.dtype == torch.bool:
            raise ValueError(f"continuous actions must be numbers, got {values.dtype}")
        values = values.float()
        if values.numel() == 0:
            values = values.reshape(*shape, self.n)
        if values.ndim == 1 and values.shape[0] == self.n:
            values = values.expand(*shape, self.n)
        if tuple(values.shape) != (*shape, self.n):
            raise ValueError(
                f"expected continuous actions of shape {(*shape, self.n)} "
                f"({self.describe()}), got {tuple(values.shape)}"
            )
        if not torch.isfinite(values).all():
            raise ValueError("continuous actions contain NaN or inf values")
        low, high = torch.tensor(self.low), torch.tensor(self.high)
        outside = (values < low) | (values > high)
        if outside.any():
            index = outside.nonzero()[0].tolist()
            raise ValueError(
                f"control value {float(values[tuple(index)]):g} is outside the action space: "
                f"{self.describe()}"
            )
        return values

    def _expected(self) -> str:
        return "vectors of controls" if self.continuous else "integer ids"
