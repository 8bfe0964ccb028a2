"""The world shipped inside the package: pinned by sha256, the packed release of the checkpoints,
steered by CoinRun's own keys, and playable with no arguments."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

import worldsim.worlds
from simulator.rollout import rollout
from simulator.world_spec import read_world_spec
from worldsim.worlds import shipped_world

CHECKPOINTS = Path(__file__).parents[2] / "checkpoints"


def test_the_shipped_world_is_the_packed_release_of_the_checkpoints() -> None:
    world = shipped_world()
    for part in ("tokenizer", "dynamics", "lam"):
        weights = "diffusion_pytorch_model.safetensors"
        shipped = (world / part / weights).read_bytes()
        assert shipped == (CHECKPOINTS / f"{part}_coinrun" / weights).read_bytes(), part
    space = read_world_spec(world).action_space
    assert space.type == "discrete" and space.names[7] == "RIGHT" and space.n == 15
    assert len(list((world / "starts").glob("*.png"))) == 12


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
    assert result.world == shipped_world() and result.prompt.endswith("easy_level100003.png")
    with Image.open(result.path) as gif:
        assert gif.n_frames == 5 and gif.size == (64, 64)
