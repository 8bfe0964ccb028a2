"""The world shipped inside the package: pinned by sha256, the packed release of the checkpoints,
steered by CoinRun's own keys, and playable with no arguments."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

import worldsim.worlds
from simulator.engine.rollout import rollout
from simulator.world.spec import read_world_spec
from worldsim.worlds import shipped_world

CHECKPOINTS = Path(__file__).parents[2] / "checkpoints"


def assert_packed_from(world: Path, tokenizer: str, dynamics: str) -> None:
    """The world's weights are byte for byte those of the two checkpoints (git stores one blob)."""
    weights = "diffusion_pytorch_model.safetensors"
    for part, release in (("tokenizer", tokenizer), ("dynamics", dynamics)):
        shipped = (world / part / weights).read_bytes()
        assert shipped == (CHECKPOINTS / release / weights).read_bytes(), part


def test_the_shipped_world_is_the_packed_release_of_the_checkpoints() -> None:
    world = shipped_world()
    assert_packed_from(world, "delta_coinrun_still", "dynamics_delta_coinrun")
    # The delta design: frames rendered from the previous ones and 4 tokens of change.
    tokenizer_cfg = json.loads((world / "tokenizer" / "config.json").read_text())["cfg"]
    assert tokenizer_cfg["tokens"] == 4 and "max_flow" in tokenizer_cfg
    # Trained for key guidance (the play page's slider), sampled without it by default: guidance
    # runs the model twice a MaskGIT step, which would halve the frame rate.
    dynamics_cfg = json.loads((world / "dynamics" / "config.json").read_text())["cfg"]
    assert dynamics_cfg["action_dropout"] > 0
    spec = read_world_spec(world)
    assert spec.sampling.guidance == 1.0 and spec.sampling.temperature == 0.5
    space = spec.action_space
    assert space.type == "discrete" and space.n == 6  # CoinRun's 6 effects, not its 15 ids
    assert space.names == ["LEFT", "LEFT+UP", "NOOP", "UP", "RIGHT", "RIGHT+UP"]
    assert space.from_game([1, 7, 8, 13]).tolist() == [0, 4, 5, 2]  # LEFT, RIGHT, RIGHT+UP, NOOP
    assert len(list((world / "starts").glob("*.png"))) == 12


def test_the_driving_world_is_the_packed_release_steered_by_wheel_and_pedals() -> None:
    world = shipped_world("carracing")
    assert_packed_from(
        world, "delta_carracing_controls_flow", "dynamics_delta_carracing_controls_flow"
    )
    # The renderer is told the 3 controls and takes the view's motion from them alone.
    tokenizer_cfg = json.loads((world / "tokenizer" / "config.json").read_text())["cfg"]
    assert tokenizer_cfg["action_dim"] == 3 and tokenizer_cfg["flow_from_tokens"] is False
    space = read_world_spec(world).action_space
    assert space.type == "continuous" and space.names == ["steer", "gas", "brake"]
    assert (space.low, space.high) == ([-1.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    starts = json.loads((world / "starts" / "starts.json").read_text())
    assert len(starts) == 16 and all(s["track_seed"] >= 1_000_000 for s in starts)  # held out
    assert sum("mid-drive" in s["label"] for s in starts) == 8  # not only straights
    size = sum(p.stat().st_size for p in world.rglob("*") if p.is_file())
    assert size < 8 * 2**20  # the package stays small


def test_a_damaged_or_incomplete_install_is_named(tmp_path, monkeypatch) -> None:
    copy = tmp_path / "coinrun"
    shutil.copytree(shipped_world(), copy)
    monkeypatch.setattr(worldsim.worlds, "WORLDS", tmp_path)
    assert shipped_world() == copy
    with (copy / "world.json").open("a") as f:
        f.write(" ")
    with pytest.raises(ValueError, match="world.json does not match its pinned sha256"):
        shipped_world()
    (copy / "world.json").unlink()
    with pytest.raises(FileNotFoundError, match="world.json is missing"):
        shipped_world()
    with pytest.raises(FileNotFoundError, match="no shipped world 'mars'; shipped: coinrun"):
        shipped_world("mars")


def test_rollout_with_no_world_or_prompt_plays_the_shipped_one(tmp_path) -> None:
    result = rollout("RIGHT*3,RIGHT+UP", str(tmp_path / "r.gif"), scale=1)
    assert result.world == shipped_world() and result.prompt.endswith("allthemes_level100011.png")
    with Image.open(result.path) as gif:
        assert gif.n_frames == 5 and gif.size == (64, 64)
