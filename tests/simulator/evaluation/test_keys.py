"""The held-keys sheet: one labelled row per start and key, from a world's named actions."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from simulator.engine.sampling_config import SamplingConfig
from simulator.engine.world_simulator import WorldSimulator
from simulator.evaluation.keys import held_key_actions, view_shift, write_held_keys
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
    held = write_held_keys(sim, starts, tmp_path, steps=6, every=2, shift_after=4)
    png, mp4 = held.paths
    with Image.open(png) as sheet:  # 8 rows; label + frames 0, 2, 4, 6; 2-pixel borders
        assert sheet.size == (5 * 20, 8 * 20)
    assert mp4.stat().st_size > 0
    with pytest.raises(ValueError, match="no action named UP or JUMP for the JUMP row"):
        held_key_actions(engine(["NOOP", "LEFT", "RIGHT"]))
    assert set(held.shifts) == {"LEFT", "RIGHT", "JUMP", "still"} and held.shift_after == 4
    assert held.shifts["RIGHT"].shape == (2, 2) and "frame 4" in held.render()


def test_view_shift_finds_how_far_the_scene_moved() -> None:
    torch.manual_seed(0)
    scene = torch.rand(3, 3, 40, 80) * 2 - 1
    before = scene[..., 8:40, 20:52]  # 32x32 views of a wider scene
    after = torch.stack(
        [scene[0, :, 8:40, 25:57], scene[1, :, 5:37, 20:52], scene[2, :, 8:40, 20:52]]
    )  # the view moved right 5 px, the view moved up 3 px, no motion
    assert view_shift(before, after, max_shift=6).tolist() == [[-5, 0], [0, 3], [0, 0]]
    flat = torch.zeros(1, 3, 32, 32)  # nothing to match: no motion, not a corner shift
    assert view_shift(flat, flat, max_shift=6).tolist() == [[0, 0]]
    with pytest.raises(ValueError, match="no crop for shifts up to 16 px"):
        view_shift(flat, flat, max_shift=16)
