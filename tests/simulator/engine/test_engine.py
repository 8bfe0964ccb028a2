"""The interactive engine on tiny random models (max_frames 8, so 40 steps cross several window
jumps): cached and uncached stepping give identical tokens, both follow rollout_tokens' window
rule, states are values that failed steps never corrupt, and bad input is named."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from simulator.engine.sampling import SamplingConfig, rollout_tokens
from simulator.engine.state import EngineConfig, WorldState
from simulator.engine.world_simulator import WorldSimulator
from simulator.models.dynamics import ActionInputs, DynamicsModel
from simulator.models.dynamics_config import dynamics_preset
from tokenizer.config import tokenizer_preset
from tokenizer.model import VideoTokenizer
from worldsim.nn.kv_cache import window_start

B, SIZE, LATENT = 2, 16, 4


@pytest.fixture(scope="module")
def models() -> tuple[VideoTokenizer, DynamicsModel]:
    torch.manual_seed(0)
    return VideoTokenizer(tokenizer_preset("tiny")).eval(), DynamicsModel(dynamics_preset("tiny"))


def engine(models, **overrides) -> WorldSimulator:
    tokenizer, dynamics = models
    overrides.setdefault("sampling", SamplingConfig(steps=4, temperature=1.0))
    return WorldSimulator(tokenizer, dynamics, cfg=EngineConfig(**overrides))


def prompt(frames: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(B, frames, 3, SIZE, SIZE, generator=gen) * 2 - 1


def actions(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, LATENT, (B, n), generator=torch.Generator().manual_seed(seed))


def play(sim: WorldSimulator, steps: int, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """All tokens (B, 2 + steps, h, w) and generated frames (B, steps, C, H, W) of a game."""
    state = sim.reset(prompt(), prompt_actions=actions(1, seed=7), seed=seed)
    tokens, frames = list(state.tokens_BThw.unbind(1)), []
    for action in actions(steps).unbind(1):
        frame, state = sim.step(state, action)
        tokens.append(state.tokens_BThw[:, -1])
        frames.append(frame)
    assert state.frame_index == 1 + steps and state.tokens_BThw.shape[1] <= 8
    return torch.stack(tokens, 1), torch.stack(frames, 1)


@pytest.mark.parametrize(
    "sampling",
    [SamplingConfig(steps=4), SamplingConfig(steps=3, order="confidence", temperature=2.0)],
)
def test_cached_and_uncached_steps_give_identical_tokens(models, sampling) -> None:
    cached = play(engine(models, sampling=sampling), 40)
    uncached = play(engine(models, sampling=sampling, kv_cache=False), 40)
    assert torch.equal(cached[0], uncached[0])
    torch.testing.assert_close(cached[1], uncached[1], atol=1e-5, rtol=0)
    assert len(torch.unique(cached[0])) > 20  # a real sample, not a constant


def test_cached_and_uncached_agree_in_bf16(models) -> None:
    cached = play(engine(models, dtype="bfloat16"), 12)
    uncached = play(engine(models, dtype="bfloat16", kv_cache=False), 12)
    assert torch.equal(cached[0], uncached[0]) and torch.isfinite(cached[1]).all()


def test_the_engine_follows_rollout_tokens_and_decodes_its_window(models) -> None:
    tokenizer, dynamics = models
    sim = engine(models, hop=3)
    tokens, frames = play(sim, 20)
    gen = torch.Generator().manual_seed(3)
    expected = rollout_tokens(
        dynamics,
        tokens[:, :2],
        ActionInputs(latent=torch.cat([actions(1, seed=7), actions(20)], 1)),
        20,
        sim.sampling,
        gen,
        hop=3,
    )
    assert torch.equal(tokens, expected)
    for k in (2, 9, 21):  # before and after the decoder's window jumps
        start = window_start(k, tokenizer.cfg.max_frames, 3)
        with torch.no_grad():
            reference = tokenizer.decode(tokens[:, start : k + 1])[:, -1]
        torch.testing.assert_close(frames[:, k - 2], reference, atol=1e-5, rtol=0)


def test_observe_appends_real_frames_cached_or_not(models) -> None:
    """Teacher forcing: observed tokens join the window as sampled ones do (the same window
    rule, cached or not), and the next step samples from them."""
    frames, acts, predicted = prompt(frames=12), actions(11, seed=5), []
    for kv_cache in (True, False):
        sim = engine(models, kv_cache=kv_cache)
        real = torch.cat([sim.encode(frames[:, :8]), sim.encode(frames[:, 8:])], dim=1)
        state, guesses = sim.reset(frames[:, :1], seed=3), []
        for t in range(11):
            guesses.append(sim.step(state, acts[:, t])[1].tokens_BThw[:, -1])
            frame, state = sim.observe(state, acts[:, t], real[:, t + 1])
        assert torch.equal(state.tokens_BThw, real[:, window_start(11, 8, sim.hop) :])
        decoded = sim.tokenizer.decode(state.decoder.tokens_BThw)[:, -1]
        torch.testing.assert_close(frame, decoded, atol=1e-5, rtol=0)
        predicted.append(torch.stack(guesses, 1))
    assert torch.equal(predicted[0], predicted[1])
    with pytest.raises(ValueError, match=r"observed tokens must be \(B, h, w\)"):
        sim.observe(state, 0, real[:, 0, :2])


def test_deterministic_for_a_seed(models) -> None:
    sim = engine(models)
    first = sim.rollout(prompt(1), actions(5), seed=4)
    assert torch.equal(first, sim.rollout(prompt(1), actions(5), seed=4))
    assert not torch.equal(first, sim.rollout(prompt(1), actions(5), seed=5))
    assert first.shape == (B, 6, 3, SIZE, SIZE) and first.abs().max() <= 1
    assert sim.rollout(prompt(1), []).shape == (B, 1, 3, SIZE, SIZE)


def test_worlds_in_a_batch_are_independent(models) -> None:
    sim = engine(models)
    acts = actions(6)
    other = acts.clone()
    other[1] = (other[1] + 1) % LATENT
    a, b = sim.rollout(prompt(1), acts, seed=2), sim.rollout(prompt(1), other, seed=2)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])


def test_steps_leave_their_state_unchanged_and_can_branch(models) -> None:
    sim = engine(models)
    start = sim.reset(prompt(1), seed=1)
    for _ in range(5):
        _, start = sim.step(start, 0)
    frame_a, state_a = sim.step(start, 1)
    frame_b, _ = sim.step(start, 2)  # a branch from the same state
    again, _ = sim.step(start, 1)
    assert torch.equal(frame_a, again) and not torch.equal(frame_a, frame_b)
    # the first branch continues as if the second never happened
    on_a = [sim.step(state_a, 3)[0]]
    fresh = sim.reset(prompt(1), seed=1)
    for action in (0, 0, 0, 0, 0, 1):
        _, fresh = sim.step(fresh, action)
    assert torch.equal(on_a[0], sim.step(fresh, 3)[0])


def test_a_failed_step_never_corrupts_the_state(models, monkeypatch) -> None:
    sim = engine(models)
    state = sim.reset(prompt(1), seed=1)
    _, state = sim.step(state, 0)
    expected, _ = sim.step(state, 1)
    with pytest.raises(ValueError, match="outside the action space"):
        sim.step(state, LATENT)
    decode_step = sim.tokenizer.decode_step

    def broken(*args: object) -> None:
        raise RuntimeError("decoder failed")

    monkeypatch.setattr(sim.tokenizer, "decode_step", broken)
    with pytest.raises(RuntimeError, match="decoder failed"):
        sim.step(state, 1)  # fails after the dynamics cache took the new frame
    monkeypatch.setattr(sim.tokenizer, "decode_step", decode_step)
    assert torch.equal(sim.step(state, 1)[0], expected)


def test_bad_actions_and_states_are_named(models) -> None:
    sim = engine(models)
    state = sim.reset(prompt(1))
    with pytest.raises(ValueError, match=r"action 4 is outside the action space: 4 latent"):
        sim.step(state, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="action -1 is outside"):
        sim.step(state, -1)
    with pytest.raises(ValueError, match="integer ids"):
        sim.step(state, 1.5)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        sim.step(state, [0, 1, 2])
    with pytest.raises(ValueError, match="call reset first"):
        sim.step(None, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="another WorldSimulator"):
        engine(models).step(state, 0)
    assert isinstance(sim.step(state, [0, 3])[1], WorldState)


def test_prompts_are_resized_with_a_note_or_refused(models) -> None:
    sim = engine(models)
    image = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    with pytest.warns(UserWarning, match=r"30x40, centre-cropped to 30x30; resized to 16x16"):
        state = sim.reset(image)
    assert state.frame_BCHW.shape == (1, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="channels-last RGB"):
        sim.reset(np.zeros((16, 16, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"lie in \[-1, 1\]"):
        sim.reset(torch.full((3, SIZE, SIZE), 2.0))
    with pytest.raises(ValueError, match="needs the 2 actions taken between them"):
        sim.reset(prompt(3))
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        sim.reset(prompt(3), prompt_actions=actions(1))
    with pytest.warns(UserWarning, match="keeping its last 7"):
        long = sim.reset(prompt(9), prompt_actions=actions(8))
    assert long.tokens_BThw.shape[1] == 7


def test_bad_engine_options_are_named(models) -> None:
    with pytest.raises(ValueError, match="dtype must be one of"):
        engine(models, dtype="float16")
    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA device"):
        engine(models, cuda_graphs=True)
    with pytest.raises(ValueError, match="window hop must lie in .*1..7, got 8"):
        engine(models, hop=8)
    with pytest.raises(ValueError, match="unknown attention backend"):
        engine(models, attention="flash9")


def test_attention_backends_give_the_same_game(models) -> None:
    own = copy.deepcopy(models)  # the engine switches the backend of the models it is given
    sdpa = play(engine(own, attention="sdpa"), 6)
    reference = play(engine(own, attention="reference"), 6)
    torch.testing.assert_close(sdpa[1], reference[1], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_compiled_engine_matches_eager(models) -> None:
    eager = play(engine(models), 3)
    compiled = play(engine(models, compile=True), 3)
    assert torch.equal(eager[0], compiled[0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_cuda_engine_matches_uncached(models, cuda_graphs: bool) -> None:
    common = {"device": "cuda", "dtype": "bfloat16"}
    cached = play(engine(models, cuda_graphs=cuda_graphs, **common), 12)
    uncached = play(engine(models, kv_cache=False, **common), 12)
    assert torch.equal(cached[0], uncached[0])
