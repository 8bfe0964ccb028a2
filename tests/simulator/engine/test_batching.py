"""`WorldSimulator.step_many`: one-world states stepped together give exactly the frames and
states each gives alone, whoever else is in the batch, across window jumps, for the grid and
the delta tokenizer; stacked caches never write into their inputs; bad input is named."""

from __future__ import annotations

import pytest
import torch

from simulator.engine import batching
from simulator.engine.sampling import SamplingConfig
from simulator.engine.state import EngineConfig
from simulator.engine.world_simulator import WorldSimulator
from simulator.models.dynamics import DynamicsModel
from simulator.models.dynamics_config import dynamics_preset
from tokenizer.config import tokenizer_preset
from tokenizer.delta import DeltaTokenizer
from tokenizer.delta_config import delta_tokenizer_preset
from tokenizer.model import VideoTokenizer

SIZE, LATENT = 16, 4


@pytest.fixture(scope="module", params=["grid", "delta"])
def sim(request: pytest.FixtureRequest) -> WorldSimulator:
    torch.manual_seed(0)
    if request.param == "grid":
        tokenizer: VideoTokenizer | DeltaTokenizer = VideoTokenizer(tokenizer_preset("tiny"))
        dynamics = DynamicsModel(dynamics_preset("tiny"))
    else:
        tokenizer = DeltaTokenizer(delta_tokenizer_preset("tiny"))
        dynamics = DynamicsModel(dynamics_preset("tiny", num_codes=tokenizer.num_codes, grid=2))
    cfg = EngineConfig(sampling=SamplingConfig(steps=3, temperature=1.0))
    return WorldSimulator(tokenizer.eval(), dynamics.eval(), cfg=cfg)


def frame(seed: int) -> torch.Tensor:
    return torch.rand(1, 1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_players_stepped_together_get_their_own_worlds(sim: WorldSimulator) -> None:
    # Four players: two start together, one is 3 frames ahead (another window length), one
    # starts later; 20 steps cross the tiny dynamics' window jumps (max_frames 8).
    states = [sim.reset(frame(i), seed=10 + i) for i in range(4)]
    for _ in range(3):
        states[2] = sim.step(states[2], 1)[1]
    alone = list(states)
    for t in range(20):
        actions = [(t + i) % LATENT for i in range(len(states))]
        together = sim.step_many(states, actions)
        for i, (frame_BCHW, state) in enumerate(together):
            expected_frame, alone[i] = sim.step(alone[i], actions[i])
            assert torch.equal(state.tokens_BThw, alone[i].tokens_BThw), (t, i)
            assert torch.equal(frame_BCHW, expected_frame), (t, i)
            assert state.frame_index == alone[i].frame_index
            assert torch.equal(state.rng_state, alone[i].rng_state)
        states = [state for _, state in together]
        if t == 5:  # a fifth player joins
            states.append(sim.reset(frame(9), seed=99))
            alone.append(states[-1])


def test_a_world_does_not_depend_on_who_else_plays(sim: WorldSimulator) -> None:
    me = sim.reset(frame(0), seed=1)
    with_one = sim.step_many([me, sim.reset(frame(1), seed=2)], [1, 2])[0]
    with_two = sim.step_many([sim.reset(frame(3), seed=5), me, sim.reset(frame(4), seed=6)],
                             [0, 1, 3])[1]  # fmt: skip
    assert torch.equal(with_one[0], with_two[0])
    assert torch.equal(with_one[1].tokens_BThw, with_two[1].tokens_BThw)


def test_stepping_together_leaves_the_given_states_usable(sim: WorldSimulator) -> None:
    states = [sim.reset(frame(i), seed=i) for i in range(2)]
    for _ in range(4):
        states = [s for _, s in sim.step_many(states, [1, 2])]
    first = sim.step_many(states, [1, 2])
    again = sim.step_many(states, [1, 2])  # branching from the same states: same worlds
    for (f1, s1), (f2, s2) in zip(first, again, strict=True):
        assert torch.equal(f1, f2) and torch.equal(s1.tokens_BThw, s2.tokens_BThw)
    branched = sim.step(first[0][1], 3)[1]  # one world of a stacked step goes on alone
    assert branched.frame_index == first[0][1].frame_index + 1
    assert torch.equal(sim.step_many([first[1][1]], [0])[0][0], sim.step(first[1][1], 0)[0])


def test_signature_groups_only_states_that_stack(sim: WorldSimulator) -> None:
    a, b = sim.reset(frame(0), seed=0), sim.reset(frame(1), seed=1)
    c = sim.step(b, 1)[1]
    skip = ("frame_index", "rng_state")
    keys = [batching.signature(s, skip) for s in (a, b, c)]
    assert batching.groups(keys) == [[0, 1], [2]]


def test_bad_batches_are_named(sim: WorldSimulator) -> None:
    one = sim.reset(frame(0))
    two = sim.reset(torch.cat([frame(0), frame(1)]))
    with pytest.raises(ValueError, match="2 states but 1 actions"):
        sim.step_many([one, one], [1])
    with pytest.raises(ValueError, match="states of one world each"):
        sim.step_many([two], [1])
    with pytest.raises(ValueError, match="outside the action space"):
        sim.step_many([one], [LATENT])


def test_worlds_whose_windows_differ_share_each_dynamics_pass(sim: WorldSimulator) -> None:
    states = [sim.reset(frame(i), seed=i) for i in range(3)]
    for i in (1, 2):  # windows of 1, 2 and 3 frames: three stacks
        for _ in range(i):
            states[i] = sim.step(states[i], 1)[1]
    batches: list[int] = []
    hook = sim.dynamics.to_logits.register_forward_hook(
        lambda _module, args, _out: batches.append(args[0].shape[0])
    )
    try:
        sim.step(states[0], 0)
        alone = len(batches)
        batches.clear()
        sim.step_many(states, [0, 1, 2])
    finally:
        hook.remove()
    assert batches == [3] * alone  # one pass per MaskGIT step, every world in it
