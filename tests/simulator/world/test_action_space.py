"""The one action-space object: ids and controls checked and shaped for the dynamics, ranges
enforced, the idle action, and `--actions` text for both kinds."""

from __future__ import annotations

import pytest
import torch

from data_pipeline.schema import ActionSpace
from simulator.world.action_space import WorldActionSpace
from simulator.world.spec import parse_actions

CAR = WorldActionSpace("continuous", 3, ["steer", "gas", "brake"], low=[-1, 0, 0], high=[1, 1, 1])
KEYS = WorldActionSpace("discrete", 3, ["NOOP", "LEFT", "RIGHT"])


def test_controls_become_float_vectors_within_their_ranges() -> None:
    one = CAR.tensor([0.5, 1.0, 0.0], (2,), "cpu")  # one vector stands for every world
    assert one.shape == (2, 3) and one.dtype == torch.float32
    assert CAR.tensor(torch.zeros(2, 4, 3), (2, 4), "cpu").shape == (2, 4, 3)
    assert CAR.tensor([], (2, 0), "cpu").shape == (2, 0, 3)
    with pytest.raises(ValueError, match="control value 1.5 is outside the action space"):
        CAR.tensor([0.0, 1.5, 0.0], (1,), "cpu")
    with pytest.raises(ValueError, match=r"expected continuous actions of shape \(1, 3\)"):
        CAR.tensor([0.0, 1.0], (1,), "cpu")
    with pytest.raises(ValueError, match="NaN or inf"):
        CAR.tensor([float("nan"), 0.0, 0.0], (1,), "cpu")
    assert CAR.idle() == [0.0, 0.0, 0.0] and KEYS.idle() == 0
    assert "steer -1..1, gas 0..1" in CAR.describe()


def test_ids_stay_ids_and_bad_ones_are_named() -> None:
    assert KEYS.tensor(2, (3,), "cpu").tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="action 3 is outside the action space"):
        KEYS.tensor([0, 3], (2,), "cpu")
    with pytest.raises(ValueError, match="integer ids"):
        KEYS.tensor([0.5], (1,), "cpu")


def test_a_space_must_be_whole() -> None:
    assert CAR.problems() == []
    bad = WorldActionSpace("continuous", 2, low=[0.0], high=[1.0])
    assert "needs low and high for each of its 2 controls" in " ".join(bad.problems())
    flipped = WorldActionSpace("continuous", 1, low=[1.0], high=[0.0])
    assert "low < high" in " ".join(flipped.problems())


def test_recorded_spaces_and_action_text() -> None:
    recorded = ActionSpace("continuous", shape=(3,), names=("steer", "gas", "brake"))
    assert WorldActionSpace.from_data(recorded, [-1, 0, 0], [1, 1, 1]) == CAR
    assert parse_actions("-0.5:1:0*2,0:0:1", CAR) == [[-0.5, 1.0, 0.0]] * 2 + [[0.0, 0.0, 1.0]]
    with pytest.raises(ValueError, match="not 3 control values joined by ':'"):
        parse_actions("RIGHT", CAR)
    with pytest.raises(ValueError, match="outside the action space"):
        parse_actions("2:0:0", CAR)
    assert parse_actions("RIGHT*2,0", KEYS) == [2, 2, 0]
