"""World checkpoints (save_world / load_world / WorldSimulator.from_pretrained) and the
`worldsim rollout` function: round trips, mismatches named, prompts from files, video outputs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile

import av
import numpy as np
import pytest
import torch
from PIL import Image

from commands.main import main
from simulator.engine.prompt import LoadedPrompt, prompt_and_actions
from simulator.engine.rollout import rollout
from simulator.engine.sampling_config import SamplingConfig
from simulator.engine.state import EngineConfig
from simulator.engine.world_simulator import WorldSimulator
from simulator.models.dynamics import DynamicsModel
from simulator.models.dynamics_config import dynamics_preset
from simulator.world.checkpoint import load_world, pack_world, save_world
from simulator.world.spec import WorldActionSpace, WorldSpec, parse_actions
from tokenizer.config import tokenizer_preset
from tokenizer.model import VideoTokenizer

DISCRETE = WorldSpec(
    WorldActionSpace("discrete", 3, ["noop", "left", "right"]), SamplingConfig(steps=2), hop=3
)


def models(**dynamics_overrides) -> tuple[VideoTokenizer, DynamicsModel]:
    torch.manual_seed(0)
    dynamics = DynamicsModel(dynamics_preset("tiny", **dynamics_overrides))
    return VideoTokenizer(tokenizer_preset("tiny")), dynamics


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("worlds") / "coin"
    tokenizer, dynamics = models(action_sources=["discrete"], num_discrete_actions=3)
    save_world(path, tokenizer, dynamics, spec=DISCRETE)
    return str(path)


def test_save_and_load_round_trip(world: str) -> None:
    loaded = load_world(world)
    assert loaded.spec == DISCRETE and loaded.lam is None
    sim = WorldSimulator.from_pretrained(world)
    assert sim.hop == 3 and sim.sampling.steps == 2 and sim.action_space.names[2] == "right"
    state = sim.reset(torch.zeros(1, 3, 16, 16))
    frame, _ = sim.step(state, 2)
    assert frame.shape == (1, 3, 16, 16)
    cfg = EngineConfig(sampling=SamplingConfig(steps=5))
    assert WorldSimulator.from_pretrained(world, cfg).sampling.steps == 5


def test_save_replaces_a_world_atomically_but_nothing_else(world: str, tmp_path) -> None:
    tokenizer, dynamics = models()  # latent actions by default
    target = tmp_path / "w"
    save_world(target, tokenizer, dynamics)
    save_world(target, tokenizer, dynamics)
    spec = json.loads((target / "world.json").read_text())
    assert spec["action_space"] == {
        "type": "latent",
        "n": 4,
        "names": [],
        "game_actions": [],
        "low": [],
        "high": [],
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # no temporary folders left
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not a world checkpoint; refusing"):
        save_world(tmp_path / "data", tokenizer, dynamics)


def test_mismatched_parts_are_named(tmp_path) -> None:
    tokenizer, dynamics = models(num_codes=64)
    with pytest.raises(ValueError, match="tokenizer has 125 codes but dynamics num_codes is 64"):
        save_world(tmp_path / "a", tokenizer, dynamics)
    tokenizer, dynamics = models()
    wrong = WorldSpec(WorldActionSpace("discrete", 5))
    with pytest.raises(ValueError, match=r"steers 'discrete' actions .* \['latent'\]"):
        save_world(tmp_path / "b", tokenizer, dynamics, spec=wrong)
    with pytest.raises(ValueError, match="type must be one of"):
        save_world(tmp_path / "c", tokenizer, dynamics, spec=WorldSpec(WorldActionSpace("x", 4)))
    with pytest.raises(ValueError, match="hop must lie in 1..7"):
        save_world(
            tmp_path / "d",
            tokenizer,
            dynamics,
            spec=WorldSpec(WorldActionSpace("latent", 4), hop=9),
        )
    with pytest.raises(FileNotFoundError, match="world.json missing.*`worldsim pack --tokenizer"):
        load_world(tmp_path)


def test_corrupt_world_json_is_named(world: str, tmp_path) -> None:
    broken = tmp_path / "broken"
    tokenizer, dynamics = models()
    save_world(broken, tokenizer, dynamics)
    (broken / "world.json").write_text('{"action_space": {"type": "latent", "n": 4}, "x": 1}')
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['x'\]"):
        load_world(broken)
    (broken / "world.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        load_world(broken)


def test_parse_actions_takes_ids_and_names() -> None:
    space = DISCRETE.action_space
    assert parse_actions("0, 2,RIGHT,left", space) == [0, 2, 2, 1]
    assert parse_actions("right*3,0", space) == [2, 2, 2, 0]
    with pytest.raises(ValueError, match="repeat count must be an integer >= 1"):
        parse_actions("right*0", space)
    with pytest.raises(ValueError, match="'jump' is not an id of 3 discrete actions"):
        parse_actions("0,jump", space)
    with pytest.raises(ValueError, match="action 3 is outside the action space"):
        parse_actions("0,3", space)


def test_rollout_writes_gif_and_mp4(world: str, tmp_path) -> None:
    image = tmp_path / "start.png"
    Image.fromarray(np.full((24, 24, 3), 90, dtype=np.uint8)).save(image)
    with pytest.warns(UserWarning, match="resized to 16x16"):
        result = rollout(
            "0,1,2,2", str(tmp_path / "r.gif"), checkpoint=world, prompt=str(image), fps=5
        )
    with Image.open(tmp_path / "r.gif") as gif:
        assert gif.n_frames == 5 and gif.size == (64, 64)
    assert result.actions == 4 and "4 actions" in result.render()
    out = tmp_path / "r.mp4"
    with pytest.warns(UserWarning, match="resized"):
        rollout(
            "right,left",
            str(out),
            checkpoint=world,
            prompt=str(image),
            steps=1,
            temperature=0,
            scale=2,
        )
    with av.open(str(out)) as video:
        assert sum(1 for _ in video.decode(video=0)) == 3
    with pytest.raises(ValueError, match="must end in .mp4 or .gif"):
        rollout("0", str(tmp_path / "r.avi"), checkpoint=world, prompt=str(image))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        rollout("0", str(out), checkpoint=world, prompt=str(tmp_path / "none.png"))


def test_rollout_checks_its_arguments_before_loading_anything(world: str, tmp_path, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("loaded before the arguments were checked")

    monkeypatch.setattr("simulator.world.checkpoint.load_world", no_loading)
    monkeypatch.setattr("simulator.engine.prompt.load_prompt", no_loading)
    out = str(tmp_path / "r.gif")
    with pytest.raises(ValueError, match="action 7 is outside the action space"):
        rollout("0,7", out, checkpoint=world, prompt="start.png")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        rollout("0", out, checkpoint=world, prompt="start.png", steps=0)
    with pytest.raises(FileNotFoundError, match="no world in .*worldsim pack"):
        rollout("0", out, checkpoint=str(tmp_path), prompt="start.png")
    # The command module itself loads no torch: a refusal comes before seconds of imports.
    code = (
        "import sys, simulator.engine.rollout; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rollout_from_a_shard_sample_uses_its_true_actions(world: str, tmp_path) -> None:
    shard = tmp_path / "train-000000.tar"
    frames = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    members = {"frames.npy": frames, "actions.npy": np.array([0, 1, 2, 1, 0])}
    with tarfile.open(shard, "w") as tar:
        for name, array in members.items():
            buf = io.BytesIO()
            np.save(buf, array)
            info = tarfile.TarInfo(f"clip-000000.{name}")
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
    result = rollout(
        "1,1", str(tmp_path / "s.gif"), checkpoint=world, prompt=f"{shard}#clip-000000"
    )
    assert result.note == "last 5 frames with their actions"
    with pytest.raises(ValueError, match="no clip 'other'.*clip-000000"):
        rollout("1", str(tmp_path / "s.gif"), checkpoint=world, prompt=f"{shard}#other")


def test_a_model_trained_with_source_dropout_is_steered_by_either_source(tmp_path) -> None:
    both = {"action_sources": ["latent", "discrete"], "num_discrete_actions": 3}
    tokenizer, strict = models(**both)
    with pytest.raises(ValueError, match=r"\['latent', 'discrete'\] \(source_dropout=0.0\)"):
        save_world(tmp_path / "strict", tokenizer, strict, spec=DISCRETE)
    tokenizer, dynamics = models(**both, source_dropout=0.5)
    for name, spec in {
        "true": DISCRETE,
        "latent": WorldSpec(WorldActionSpace("latent", 4)),
    }.items():
        engine = WorldSimulator.from_pretrained(
            save_world(tmp_path / name, tokenizer, dynamics, spec=spec)
        )
        frame, _ = engine.step(engine.reset(torch.zeros(1, 3, 16, 16)), 1)
        assert frame.shape == (1, 3, 16, 16)


def test_pack_command_bundles_parts_the_rollout_command_plays(tmp_path, capsys) -> None:
    tokenizer, dynamics = models(action_sources=["discrete"], num_discrete_actions=3)
    tokenizer.save_pretrained(tmp_path / "tok")
    dynamics.save_pretrained(tmp_path / "dyn")
    world = tmp_path / "world"
    args = ["pack", "--tokenizer", str(tmp_path / "tok"), "--dynamics", str(tmp_path / "dyn")]
    assert (
        main([*args, "--out", str(world), "--action-names", "noop,left,right", "--steps", "2"]) == 0
    )
    assert "steered by 3 discrete actions" in capsys.readouterr().out
    spec = load_world(world).spec
    assert spec.action_space.names == ["noop", "left", "right"] and spec.sampling.steps == 2
    image = tmp_path / "start.png"
    Image.fromarray(np.full((16, 16, 3), 90, dtype=np.uint8)).save(image)
    assert main(["rollout", "--checkpoint", str(world), "--prompt", str(image), "--actions",
                 "left,right", "--out", str(tmp_path / "r.gif")]) == 0  # fmt: skip
    wide = tmp_path / "wide.png"
    Image.fromarray(np.full((20, 28, 3), 90, dtype=np.uint8)).save(wide)
    capsys.readouterr()
    assert main(["rollout", "--checkpoint", str(world), "--prompt", str(wide), "--actions", "0",
                 "--out", str(tmp_path / "w.gif")]) == 0  # fmt: skip
    err = capsys.readouterr().err  # the resize note, as one plain line
    assert "worldsim: warning: prompt frames are 28x20, centre-cropped to 20x20" in err
    assert "UserWarning" not in err and len(err.strip().splitlines()) == 1
    assert main([*args, "--out", str(world), "--steer", "latent"]) == 2  # named refusal
    assert "steers 'latent' actions" in capsys.readouterr().err


def test_pack_refuses_guidance_for_a_model_not_trained_for_it(tmp_path, capsys) -> None:
    tokenizer, dynamics = models(action_sources=["discrete"], num_discrete_actions=3)
    tokenizer.save_pretrained(tmp_path / "tok")
    dynamics.save_pretrained(tmp_path / "dyn")
    args = ["pack", "--tokenizer", str(tmp_path / "tok"), "--dynamics", str(tmp_path / "dyn")]
    assert main([*args, "--out", str(tmp_path / "w"), "--guidance", "2"]) == 2
    assert "not trained for key guidance" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_a_world_steered_by_effect_classes_maps_the_games_ids(tmp_path) -> None:
    """A dynamics trained on effect classes (3 classes of 5 game ids) packs into a world whose
    keys are the classes, and a shard clip's game ids start it as classes."""
    groups, names = [[0, 3], [1], [2, 4]], ["NOOP", "LEFT", "RIGHT"]
    tokenizer, dynamics = models(
        action_sources=["discrete"], num_discrete_actions=3, action_groups=groups,
        action_names=names,
    )  # fmt: skip
    tokenizer.save_pretrained(tmp_path / "tok")
    dynamics.save_pretrained(tmp_path / "dyn")
    path, spec = pack_world(str(tmp_path / "tok"), str(tmp_path / "dyn"), str(tmp_path / "w"))
    space = load_world(path).spec.action_space
    assert space == spec.action_space and space.names == names
    assert space.game_actions == [0, 1, 2, 0, 2]
    assert space.from_game(np.array([3, 4, 1])).tolist() == [0, 2, 1]
    assert space.from_game(torch.tensor([[4, 0]])).tolist() == [[2, 0]]
    assert WorldActionSpace("discrete", 2, game_actions=[0, 2]).problems() == [
        "game_actions must map into 0..1, got [0, 2]"
    ]
    sim = WorldSimulator.from_pretrained(path)
    loaded = LoadedPrompt(np.zeros((3, 16, 16, 3), np.uint8), np.array([3, 4, 1]))
    _, between, note = prompt_and_actions(loaded, sim)
    assert between.tolist() == [[0, 2]] and note == "last 3 frames with their actions"
