"""The held-keys sheet: one labelled row per start and key, from a world's named actions."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from simulator.engine.sampling_config import SamplingConfig
from simulator.engine.world_simulator import WorldSimulator
from simulator.evaluation.keys import held_key_actions, write_held_keys
from simulator.models.dynamics import DynamicsModel
from simulator.models.dynamics_config import dynamics_preset
from simulator.world.spec import WorldActionSpace, WorldSpec
from tokenizer.config import tokenizer_preset
from tokenizer.model import VideoTokenizer

NAMES = ["NOOP", "LEFT", "RIGHT", "UP"]


def engine(names: list[str]) -> WorldSimulator:
    torch.manual_seed(0)
    cfg = dynamics_preset("tiny", action_sources=["discrete"], num_discrete_actions=len(names))
    spec = WorldSpec(WorldActionSpace("discrete", len(names), names), SamplingConfig(steps=1))
    return WorldSimulator(VideoTokenizer(tokenizer_preset("tiny")), DynamicsModel(cfg), spec)


def test_the_sheet_has_a_labelled_row_per_start_and_key(tmp_path) -> None:
    sim = engine(NAMES)
    assert held_key_actions(sim) == {"LEFT": 1, "RIGHT": 2, "JUMP": 3, "still": 0}
    starts = torch.rand(2, 3, 16, 16) * 2 - 1
    png, mp4 = write_held_keys(sim, starts, tmp_path, steps=6, every=2)
    with Image.open(png) as sheet:  # 8 rows; label + frames 0, 2, 4, 6; 2-pixel borders
        assert sheet.size == (5 * 20, 8 * 20)
    assert mp4.stat().st_size > 0
    with pytest.raises(ValueError, match="no action named UP or JUMP for the JUMP row"):
        held_key_actions(engine(["NOOP", "LEFT", "RIGHT"]))
