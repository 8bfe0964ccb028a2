"""A world checkpoint: the tokenizer, dynamics and (optionally) latent action model that play
together, plus `world.json` saying how a player steers them.

    WORLD/
      world.json     action space, default sampling config, window hop
      tokenizer/     VideoTokenizer or DeltaTokenizer (tokenizer.registry), save_pretrained
      dynamics/      DynamicsModel.save_pretrained
      lam/           LatentActionModel.save_pretrained (optional)

The action space is "latent" (the LAM's codes, n = num latent actions; Genie's playable
environments) or "discrete" (the game's true actions, n and optional names). `save_world` writes
the folder under a temporary name and renames it, so a reader never sees half a world;
`load_world` checks that the parts fit before anything runs.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.models.dynamics import DynamicsModel
from simulator.models.lam import LatentActionModel
from simulator.world.spec import (
    WORLD_FILE,
    WorldActionSpace,
    WorldSpec,
    discrete_space,
    read_world_spec,
)
from tokenizer.registry import AnyTokenizer, load_tokenizer
from worldsim.io.files import replace_dir


@dataclass
class World:
    tokenizer: AnyTokenizer
    dynamics: DynamicsModel
    lam: LatentActionModel | None
    spec: WorldSpec


def save_world(
    path: str | os.PathLike[str],
    tokenizer: AnyTokenizer,
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
    replace_dir(tmp, path)
    return path


def load_world(path: str | os.PathLike[str], device: Any = "cpu") -> World:
    """Load and cross-check a world folder written by `save_world`."""
    path = Path(path)
    spec = read_world_spec(path)
    tokenizer = load_tokenizer(path / "tokenizer").to(device).eval()
    dynamics = DynamicsModel.from_pretrained(path / "dynamics").to(device).eval()
    lam = None
    if (path / "lam").exists():
        lam = LatentActionModel.from_pretrained(path / "lam").to(device).eval()
    dynamics.check_compatible(tokenizer, lam)
    spec.check(dynamics, lam)
    return World(tokenizer, dynamics, lam, spec)


def pack_world(
    tokenizer_path: str,
    dynamics_path: str,
    out: str,
    lam_path: str | None = None,
    steer: str | None = None,
    action_names: list[str] | None = None,
    steps: int | None = None,
    temperature: float | None = None,
    guidance: float | None = None,
    action_ranges: list[tuple[float, float]] | None = None,
) -> tuple[Path, WorldSpec]:
    """`worldsim pack`: bundle trained parts into a world folder that the engine, `worldsim
    rollout` and the app load. `steer` picks the action source players use (default: what
    `WorldSpec.default_for` picks); `steps`, `temperature` and `guidance` the default
    sampling (None: SamplingConfig's); `action_ranges` each continuous control's (low, high)."""
    tokenizer = load_tokenizer(tokenizer_path)
    dynamics = DynamicsModel.from_pretrained(dynamics_path)
    lam = None if lam_path is None else LatentActionModel.from_pretrained(lam_path)
    spec = WorldSpec.default_for(dynamics)
    if steer == "latent":
        spec.action_space = WorldActionSpace("latent", dynamics.cfg.num_latent_actions)
    elif steer == "discrete":
        spec.action_space = discrete_space(dynamics)
    elif steer == "continuous":
        n = dynamics.cfg.continuous_dim
        spec.action_space = WorldActionSpace("continuous", n, low=[-1.0] * n, high=[1.0] * n)
    if action_names:
        spec.action_space.names = list(action_names)
    if action_ranges:
        spec.action_space.low = [float(lo) for lo, _ in action_ranges]
        spec.action_space.high = [float(hi) for _, hi in action_ranges]
    problems = spec.action_space.problems()
    if problems:
        raise ValueError("bad action space: " + "; ".join(problems))
    spec.sampling = spec.sampling.override(steps=steps, temperature=temperature, guidance=guidance)
    dynamics.cfg.check_guidance(spec.sampling.guidance)  # before writing a world that cannot play
    return save_world(out, tokenizer, dynamics, lam, spec), spec
