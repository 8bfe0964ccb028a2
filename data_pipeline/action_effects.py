"""Which of a game's action ids do the same thing, measured by playing the game.

CoinRun takes 15 action ids (procgen's full keyboard), but the game reads far fewer keys: DOWN
and the letter keys do nothing, so LEFT+DOWN is LEFT. A scorer of controllability must not ask
a model to tell apart actions the game itself cannot. This module finds the groups empirically:
from saved game states along random play, it applies every action for a few steps and calls two
actions the same when the frames they produce are identical at every probe. `worldsim data
effects procgen:coinrun` prints and writes the groups.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from data_pipeline.games import ProcgenGame, procgen_action_space, sticky_actions


@dataclass
class ActionEffects:
    game: str
    groups: list[list[int]]  # action ids that act alike, sorted; groups ordered by first id
    names: list[str]  # one per group: NOOP if it holds it, else its member with fewest keys
    probes: int  # game states every pair of actions was compared from
    steps: int  # steps each action was held for at a probe

    def class_of(self) -> list[int]:
        """Action id -> index of its group."""
        return group_of(self.groups, sum(len(g) for g in self.groups))

    def render(self) -> str:
        parts = [f"{name} {group}" for name, group in zip(self.names, self.groups, strict=True)]
        return (
            f"{self.game}: {sum(map(len, self.groups))} action ids act as {len(self.groups)} "
            f"effects ({self.probes} probes, {self.steps} steps held): " + "; ".join(parts)
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"


def group_of(groups: list[list[int]], n: int) -> list[int]:
    """Action id (0..n-1) -> index of the group holding it; no groups: every id its own."""
    out = list(range(n))
    for k, group in enumerate(groups):
        for a in group:
            out[a] = k
    return out


def measure_action_effects(
    game: str = "procgen:coinrun",
    levels: int = 8,
    probes_per_level: int = 4,
    steps: int = 6,
    distribution_mode: str = "hard",
    seed: int = 0,
) -> ActionEffects:
    """Group the game's action ids by their measured effect (see the module docstring)."""
    family, _, env_name = game.partition(":")
    if family != "procgen":
        raise ValueError(
            f"action effects are measured for procgen games (saved states), not {game}"
        )
    names = list(procgen_action_space().names or ())
    n = len(names)
    same = np.ones((n, n), dtype=bool)
    rng = np.random.default_rng(seed)
    probes = 0
    for level in range(levels):
        env = ProcgenGame(env_name, 1_000_000 + level, distribution_mode)
        try:
            env.reset()
            policy = sticky_actions(n, 1, 8, rng)
            for _ in range(probes_per_level):
                for _ in range(int(rng.integers(5, 30))):  # play on to a new state
                    if env.step(next(policy), 1)[1]:
                        break
                same &= _same_effects(env, n, steps)
                probes += 1
        finally:
            env.close()
    groups: list[list[int]] = []
    for a in range(n):
        if not any(a in g for g in groups):
            groups.append([b for b in range(n) if same[a, b]])
    # A group is named by its member with the fewest keys ("NOOP" when doing nothing is in it).
    labels = [min((names[a] for a in g), key=lambda s: (s != "NOOP", s.count("+"))) for g in groups]
    return ActionEffects(game, groups, labels, probes, steps)


def _same_effects(env: ProcgenGame, n: int, steps: int) -> np.ndarray:
    """(n, n) bool: actions a and b give identical frames for `steps` steps from the current
    state (an episode that ends counts as its own outcome)."""
    start = env.env.callmethod("get_state")
    outcomes = []
    for action in range(n):
        env.env.callmethod("set_state", start)
        frames = []
        for _ in range(steps):
            frame, ended = env.step(action, 1)
            frames.append(b"end" if ended or frame is None else frame.tobytes())
            if ended:
                break
        outcomes.append(b"|".join(frames))
    env.env.callmethod("set_state", start)
    return np.array([[outcomes[a] == outcomes[b] for b in range(n)] for a in range(n)])
