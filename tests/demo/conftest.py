"""A tiny playable world (untrained, 16x16, CoinRun-like action names) with two start frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from demo.handlers import PlayHandlers, Settings
from simulator.engine.sampling_config import SamplingConfig
from simulator.engine.world_simulator import WorldSimulator
from simulator.models.dynamics import DynamicsModel
from simulator.models.dynamics_config import dynamics_preset
from simulator.world.checkpoint import save_world
from simulator.world.spec import WorldActionSpace, WorldSpec
from tokenizer.config import tokenizer_preset
from tokenizer.model import VideoTokenizer

NAMES = ["NOOP", "LEFT", "RIGHT", "UP", "LEFT+UP", "RIGHT+UP"]
SETTINGS = Settings(steps=2, temperature=1.0, seed=0)


def save_tiny(path: Path, cfg, space: WorldActionSpace, starts: list[str]) -> Path:
    """A tiny untrained world (16x16 frames) steered by `space`, with random start frames."""
    torch.manual_seed(0)
    spec = WorldSpec(space, SamplingConfig(steps=2))
    save_world(path, VideoTokenizer(tokenizer_preset("tiny")), DynamicsModel(cfg), spec=spec)
    (path / "starts").mkdir()
    rng = np.random.default_rng(0)
    for name in starts:
        frame = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(frame).save(path / "starts" / name)
    return path


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = dynamics_preset("tiny", action_sources=["discrete"], num_discrete_actions=len(NAMES))
    space = WorldActionSpace("discrete", len(NAMES), NAMES)
    path = save_tiny(
        tmp_path_factory.mktemp("play") / "tiny", cfg, space, ["level0.png", "level1.png"]
    )
    entries = [{"file": "level0.png", "distribution_mode": "easy", "level_seed": 7}]
    (path / "starts" / "starts.json").write_text(json.dumps(entries))
    return path


@pytest.fixture
def handlers(tiny_world: Path) -> PlayHandlers:
    play = PlayHandlers(WorldSimulator.from_pretrained(tiny_world), tiny_world)
    yield play
    play.close()


@pytest.fixture(scope="session")
def tiny_car(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained world steered by continuous [steer, gas, brake], as CarRacing's."""
    cfg = dynamics_preset("tiny", action_sources=["continuous"], continuous_dim=3)
    space = WorldActionSpace(
        "continuous", 3, ["steer", "gas", "brake"], low=[-1, 0, 0], high=[1, 1, 1]
    )
    return save_tiny(tmp_path_factory.mktemp("play") / "car", cfg, space, ["track0.png"])


@pytest.fixture
def car(tiny_car: Path) -> PlayHandlers:
    play = PlayHandlers(WorldSimulator.from_pretrained(tiny_car), tiny_car)
    yield play
    play.close()
