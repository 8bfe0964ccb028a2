"""A world rendered by the delta tokenizer (tiny, random weights): the engine steps it cached and
uncached alike, starts from the real prompt, teacher forcing goes on from the real frame, and
the world folder round-trips."""

from __future__ import annotations

import pytest
import torch

from simulator.engine.sampling import SamplingConfig
from simulator.engine.state import EngineConfig
from simulator.engine.world_simulator import WorldSimulator
from simulator.models.dynamics import DynamicsModel
from simulator.models.dynamics_config import dynamics_preset
from simulator.world.checkpoint import load_world, save_world
from tokenizer.delta import DeltaTokenizer
from tokenizer.delta_config import delta_tokenizer_preset

B, SIZE, LATENT = 2, 16, 4


@pytest.fixture(scope="module")
def models() -> tuple[DeltaTokenizer, DynamicsModel]:
    torch.manual_seed(0)
    tokenizer = DeltaTokenizer(delta_tokenizer_preset("tiny")).eval()
    with torch.no_grad():
        for p in tokenizer.out.parameters():  # a renderer that moves pixels, unlike a fresh one
            p.normal_(0, 0.1)
    dynamics = DynamicsModel(dynamics_preset("tiny", num_codes=tokenizer.num_codes, grid=2))
    return tokenizer, dynamics


def engine(models, **overrides) -> WorldSimulator:
    overrides.setdefault("sampling", SamplingConfig(steps=2, temperature=1.0))
    return WorldSimulator(*models, cfg=EngineConfig(**overrides))


def prompt() -> torch.Tensor:
    return torch.rand(B, 1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1


def play(sim: WorldSimulator, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, LATENT, (B, steps), generator=torch.Generator().manual_seed(1))
    state = sim.reset(prompt(), seed=3)
    assert torch.equal(state.frame_BCHW, prompt()[:, 0])  # the world starts from the real frame
    frames = []
    for action in ids.unbind(1):
        frame, state = sim.step(state, action)
        frames.append(frame)
    return state.tokens_BThw, torch.stack(frames, 1)


def test_cached_and_uncached_play_the_same_world(models) -> None:
    cached, uncached = play(engine(models), 20), play(engine(models, kv_cache=False), 20)
    assert torch.equal(cached[0], uncached[0])
    torch.testing.assert_close(cached[1], uncached[1])
    assert cached[1].shape == (B, 20, 3, SIZE, SIZE) and cached[0].shape[2:] == (2, 2)
    assert not torch.allclose(cached[1][:, -1], prompt()[:, 0], atol=1e-2)  # it moved


def test_teacher_forcing_goes_on_from_the_real_frame(models) -> None:
    sim = engine(models)
    clip = torch.rand(B, 3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5)) * 2 - 1
    tokens = sim.encode(clip)
    state = sim.reset(clip[:, :1])
    shown, state = sim.observe(state, 0, tokens[:, 1], clip[:, 1])
    assert torch.equal(shown, clip[:, 1]) and torch.equal(state.tokens_BThw[:, 1], tokens[:, 1])
    rendered, _ = sim.observe(sim.reset(clip[:, :1]), 0, tokens[:, 1])  # tokens alone: rendered
    torch.testing.assert_close(rendered, models[0].reconstruct(clip[:, :2])[:, 1])


def test_the_world_folder_round_trips(models, tmp_path) -> None:
    path = save_world(tmp_path / "world", *models)
    world = load_world(path)
    assert isinstance(world.tokenizer, DeltaTokenizer)
    loaded = WorldSimulator(world.tokenizer, world.dynamics, world.spec, EngineConfig())
    original = WorldSimulator(*models, world.spec, EngineConfig())
    torch.testing.assert_close(
        loaded.rollout(prompt(), [1, 2, 3], seed=0), original.rollout(prompt(), [1, 2, 3], seed=0)
    )


def driving_world() -> tuple[DeltaTokenizer, DynamicsModel]:
    """A tiny world steered by 2 continuous controls whose renderer is told them too."""
    torch.manual_seed(0)
    tokenizer = DeltaTokenizer(delta_tokenizer_preset("tiny", action_dim=2)).eval()
    with torch.no_grad():
        for p in tokenizer.out.parameters():
            p.normal_(0, 0.1)
    dynamics = DynamicsModel(
        dynamics_preset(
            "tiny", num_codes=tokenizer.num_codes, grid=2, action_sources=["continuous"],
            continuous_dim=2,
        )
    )  # fmt: skip
    return tokenizer, dynamics


def test_a_renderer_told_the_controls_is_told_each_step(monkeypatch) -> None:
    tokenizer, dynamics = driving_world()
    sim = engine((tokenizer, dynamics))
    told, render = [], tokenizer.decode_step

    def spy(tokens, state, observed=None, action=None):
        told.append(action)
        return render(tokens, state, observed, action)

    controls = torch.tensor([[[0.5, -1.0], [-0.25, 1.0]]]).expand(B, -1, -1)  # (B, A, 2)
    monkeypatch.setattr(tokenizer, "decode_step", spy)
    sim.rollout(prompt(), controls, seed=0)
    assert len(told) == 2
    assert all(torch.equal(a, c) for a, c in zip(told, controls.unbind(1), strict=True))
    clip = torch.rand(B, 3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5)) * 2 - 1
    tokens = sim.encode(clip, controls)  # encoded with the controls between the frames
    assert torch.equal(tokens, tokenizer.encode(clip, controls))
    with pytest.raises(ValueError, match="pass the actions"):
        sim.encode(clip)
    states = [sim.reset(prompt()[i : i + 1], seed=i) for i in range(B)]
    stacked = sim.step_many(states, controls[:, 0].tolist())  # rendered one world at a time
    assert all(torch.equal(a, c) for a, c in zip(told[-B:], controls[:, :1], strict=True))
    assert [f.shape for f, _ in stacked] == [(1, 3, SIZE, SIZE)] * B


def test_a_renderer_told_other_controls_than_the_dynamics_is_refused() -> None:
    tokenizer, _ = driving_world()
    other = DynamicsModel(
        dynamics_preset(
            "tiny", num_codes=tokenizer.num_codes, grid=2, action_sources=["continuous"],
            continuous_dim=3,
        )
    )  # fmt: skip
    with pytest.raises(
        ValueError, match="told 2 continuous controls a frame but the dynamics takes 3"
    ):
        WorldSimulator(tokenizer, other)
