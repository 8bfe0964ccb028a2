"""`world.json`: how a player steers a world folder (its action space, default sampling, window
hop). Plain dataclasses and JSON, so commands and the app can read a world's spec and check a
player's actions before any model or torch loads; simulator/world/checkpoint.py holds the models.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_pipeline.action_effects import group_of
from simulator.engine.sampling_config import SamplingConfig
from simulator.world.action_space import WorldActionSpace
from worldsim.config import from_dict

if TYPE_CHECKING:
    from simulator.models.dynamics import DynamicsModel
    from simulator.models.lam import LatentActionModel

WORLD_FILE = "world.json"
FORMAT_VERSION = 1


@dataclass
class WorldSpec:
    action_space: WorldActionSpace
    # Interactive default: few MaskGIT steps (Genie uses 25; each costs a model pass per frame).
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(steps=4))
    hop: int | None = None  # window jump in frames; None: each model's max_frames // 2
    format_version: int = FORMAT_VERSION

    @classmethod
    def default_for(cls, dynamics: DynamicsModel) -> WorldSpec:
        """Steer what the dynamics is conditioned on: its true discrete or continuous actions
        when that is its only source, else its latent actions."""
        cfg = dynamics.cfg
        if cfg.action_sources == ["discrete"]:
            return cls(discrete_space(dynamics))
        if cfg.action_sources == ["continuous"]:  # ranges unknown to the model: -1..1 each
            n = cfg.continuous_dim
            return cls(WorldActionSpace("continuous", n, low=[-1.0] * n, high=[1.0] * n))
        return cls(WorldActionSpace("latent", cfg.num_latent_actions))

    @classmethod
    def from_json(cls, text: str, where: str = WORLD_FILE) -> WorldSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"corrupt {where}: {err}") from err
        if not isinstance(data, dict) or not isinstance(data.get("action_space"), dict):
            raise ValueError(f"{where} must be an object with an 'action_space' object")
        spec = from_dict(cls, data, where=where)
        if spec.format_version != FORMAT_VERSION:
            raise ValueError(
                f"{where} has format_version {spec.format_version}; this worldsim reads "
                f"{FORMAT_VERSION}"
            )
        return spec

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def check(self, dynamics: DynamicsModel, lam: LatentActionModel | None = None) -> None:
        """ValueError naming every way this spec does not fit the models."""
        problems = self.action_space.problems()
        try:
            self.sampling.validate()
        except ValueError as err:
            problems.append(str(err))
        cfg, space = dynamics.cfg, self.action_space
        # The engine steers one source: the model's only one, or any one of a model trained to
        # run on a subset of its sources (source_dropout).
        alone = space.type in cfg.action_sources and cfg.source_dropout > 0
        if cfg.action_sources != [space.type] and not alone:
            problems.append(
                f"world.json steers {space.type!r} actions but the dynamics is conditioned on "
                f"{cfg.action_sources} (source_dropout={cfg.source_dropout}); the engine steers "
                "exactly one source"
            )
        expected = {
            "latent": cfg.num_latent_actions,
            "discrete": cfg.num_discrete_actions,
            "continuous": cfg.continuous_dim,
        }.get(space.type, space.n)
        if space.n != expected:
            problems.append(
                f"world.json has {space.n} {space.type} actions, the dynamics {expected}"
            )
        if lam is not None and space.type == "latent" and lam.num_actions != space.n:
            problems.append(f"world.json has {space.n} latent actions, the LAM {lam.num_actions}")
        if self.hop is not None and not 1 <= self.hop < cfg.max_frames:
            problems.append(f"hop must lie in 1..{cfg.max_frames - 1}, got {self.hop}")
        if problems:
            raise ValueError("world checkpoint does not fit: " + "; ".join(problems))


def discrete_space(dynamics: DynamicsModel) -> WorldActionSpace:
    """The discrete actions a dynamics model was trained on, with their names and, for effect
    classes, the game ids each stands for."""
    cfg = dynamics.cfg
    n = sum(len(g) for g in cfg.action_groups)
    game_actions = group_of(cfg.action_groups, n) if cfg.action_groups else []
    names = list(cfg.action_names)
    return WorldActionSpace("discrete", cfg.num_discrete_actions, names, game_actions)


def read_world_spec(path: str | os.PathLike[str]) -> WorldSpec:
    """The `world.json` of world folder `path`, without loading a model."""
    spec_file = Path(path) / WORLD_FILE
    if not spec_file.is_file():
        raise FileNotFoundError(
            f"no world in {path}: {WORLD_FILE} missing (bundle trained parts into a world with "
            "`worldsim pack --tokenizer DIR --dynamics DIR [--lam DIR] --out WORLD`)"
        )
    return WorldSpec.from_json(spec_file.read_text(), where=str(spec_file))


def parse_actions(text: str, space: WorldActionSpace) -> list[Any]:
    """'0,0,3,3' -> ids; entries may also be action names (case-insensitive) when the space has
    names, and `ENTRY*N` repeats an entry N times ('RIGHT*8,UP'). For a continuous space each
    entry is its controls' values joined by ':' ('-0.5:1:0*8,0:0:1*4': steer left with full gas
    for 8 frames, then brake for 4). ValueError names the first entry that is none of these."""
    actions: list[Any] = []
    for entry in (e.strip() for e in text.split(",")):
        entry, star, count = entry.rpartition("*") if "*" in entry else (entry, "", "1")
        if star and not (count.strip().isdigit() and int(count) >= 1):
            raise ValueError(f"in {entry}*{count}, the repeat count must be an integer >= 1")
        action = _controls(entry.strip(), space) if space.continuous else _id(entry.strip(), space)
        actions += [action] * int(count)
    if space.continuous:
        space.tensor(actions, (len(actions),), "cpu")  # every value within its control's range
        return actions
    bad = [a for a in actions if not 0 <= a < space.n]
    if bad:
        raise ValueError(f"action {bad[0]} is outside the action space: {space.describe()}")
    return actions


def _id(entry: str, space: WorldActionSpace) -> int:
    names = {name.lower(): i for i, name in enumerate(space.names)}
    if entry.lstrip("-").isdigit():
        return int(entry)
    if entry.lower() in names:
        return names[entry.lower()]
    known = f"; names: {', '.join(space.names)}" if space.names else ""
    raise ValueError(f"action {entry!r} is not an id of {space.describe()}{known}")


def _controls(entry: str, space: WorldActionSpace) -> list[float]:
    try:
        values = [float(v) for v in entry.split(":")]
    except ValueError:
        values = []
    if len(values) != space.n:
        raise ValueError(
            f"action {entry!r} is not {space.n} control values joined by ':' for {space.describe()}"
        )
    return values
