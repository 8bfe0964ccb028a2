"""A world checkpoint: the tokenizer, dynamics and (optionally) latent action model that play
together, plus `world.json` saying how a player steers them.

    WORLD/
      world.json     action space, default sampling config, window hop
      tokenizer/     VideoTokenizer.save_pretrained
      dynamics/      DynamicsModel.save_pretrained
      lam/           LatentActionModel.save_pretrained (optional)

The action space is "latent" (the LAM's codes, n = num latent actions; Genie's playable
environments) or "discrete" (the game's true actions, n and optional names). `save_world` writes
the folder under a temporary name and renames it, so a reader never sees half a world;
`load_world` checks that the parts fit before anything runs.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from simulator.dynamics import DynamicsModel
from simulator.lam import LatentActionModel
from simulator.sampling import SamplingConfig
from tokenizer.model import VideoTokenizer
from worldsim.config import from_dict

WORLD_FILE = "world.json"
FORMAT_VERSION = 1
ACTION_SPACE_TYPES = ("latent", "discrete")


@dataclass
class WorldActionSpace:
    type: str  # "latent" (LAM codes) or "discrete" (the game's true action ids)
    n: int  # number of actions; ids are 0..n-1
    names: list[str] = field(default_factory=list)  # optional label per action id

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
        return out

    def describe(self) -> str:
        kind = "latent actions" if self.type == "latent" else "discrete actions"
        return f"{self.n} {kind} (ids 0..{self.n - 1})"


@dataclass
class WorldSpec:
    action_space: WorldActionSpace
    # Interactive default: few MaskGIT steps (Genie uses 25; each costs a model pass per frame).
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(steps=4))
    hop: int | None = None  # window jump in frames; None: each model's max_frames // 2
    format_version: int = FORMAT_VERSION

    @classmethod
    def default_for(cls, dynamics: DynamicsModel) -> WorldSpec:
        """Steer what the dynamics is conditioned on: its latent actions, else true discrete."""
        cfg = dynamics.cfg
        if cfg.action_sources == ["discrete"]:
            return cls(WorldActionSpace("discrete", cfg.num_discrete_actions))
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
        expected = cfg.num_latent_actions if space.type == "latent" else cfg.num_discrete_actions
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


@dataclass
class World:
    tokenizer: VideoTokenizer
    dynamics: DynamicsModel
    lam: LatentActionModel | None
    spec: WorldSpec


def save_world(
    path: str | os.PathLike[str],
    tokenizer: VideoTokenizer,
    dynamics: DynamicsModel,
    lam: LatentActionModel | None = None,
    spec: WorldSpec | None = None,
) -> Path:
    """Write the world folder atomically (an existing world at `path` is replaced)."""
    spec = spec or WorldSpec.default_for(dynamics)
    dynamics.check_compatible(tokenizer, lam)
    spec.check(dynamics, lam)
    path = Path(path)
    if path.exists() and not (path / WORLD_FILE).is_file():
        raise ValueError(f"{path} exists and is not a world checkpoint; refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(tmp / "tokenizer")
    dynamics.save_pretrained(tmp / "dynamics")
    if lam is not None:
        lam.save_pretrained(tmp / "lam")
    (tmp / WORLD_FILE).write_text(spec.to_json())
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def load_world(path: str | os.PathLike[str], device: Any = "cpu") -> World:
    """Load and cross-check a world folder written by `save_world`."""
    path = Path(path)
    spec_file = path / WORLD_FILE
    if not spec_file.is_file():
        raise FileNotFoundError(
            f"no world checkpoint in {path}: {WORLD_FILE} missing (write one with save_world)"
        )
    spec = WorldSpec.from_json(spec_file.read_text(), where=str(spec_file))
    tokenizer = VideoTokenizer.from_pretrained(path / "tokenizer").to(device).eval()
    dynamics = DynamicsModel.from_pretrained(path / "dynamics").to(device).eval()
    lam = None
    if (path / "lam").exists():
        lam = LatentActionModel.from_pretrained(path / "lam").to(device).eval()
    dynamics.check_compatible(tokenizer, lam)
    spec.check(dynamics, lam)
    return World(tokenizer, dynamics, lam, spec)


def pack_world_command(
    tokenizer_path: str,
    dynamics_path: str,
    out: str,
    lam_path: str | None = None,
    steer: str | None = None,
    action_names: list[str] | None = None,
    steps: int | None = None,
) -> int:
    """`worldsim pack`: bundle trained parts into a world folder that the engine, `worldsim
    rollout` and the app load. `steer` picks the action source players use (default: what
    `WorldSpec.default_for` picks); `steps` the default MaskGIT steps per frame."""
    tokenizer = VideoTokenizer.from_pretrained(tokenizer_path)
    dynamics = DynamicsModel.from_pretrained(dynamics_path)
    lam = None if lam_path is None else LatentActionModel.from_pretrained(lam_path)
    spec = WorldSpec.default_for(dynamics)
    if steer is not None:
        cfg = dynamics.cfg
        n = cfg.num_latent_actions if steer == "latent" else cfg.num_discrete_actions
        spec.action_space = WorldActionSpace(steer, n)
    spec.action_space.names = list(action_names or [])
    if steps is not None:
        spec.sampling = SamplingConfig(steps=steps)
    path = save_world(out, tokenizer, dynamics, lam, spec)
    print(f"world: {path}, steered by {spec.action_space.describe()}")
    return 0
