"""Game episodes as a source: Procgen and Atari episodes recorded live with a random policy, and
CarRacing episodes driven along the track (data_pipeline/driving.py).

One work unit is one episode on one level seed (`procgen:<env>`: procgen's `start_level=seed,
num_levels=1`; `atari:<Game>`: gymnasium's `ALE/<Game>-v5` reset with `seed`;
`gym:CarRacing-v3`: the track drawn by reset with `seed`, continuous actions). Level seeds are
what keep the training and held-out splits disjoint, so every unit exposes its `level_seed` and
`game` for the shard job to record and check.

The policy is random with sticky actions: each drawn action (uniformly, or by `action_weights`)
is held for a uniform number of steps in [sticky_min, sticky_max], which gives sustained motion
rather than jitter. Its RNG is seeded from (seed, level seed), and both simulators are
deterministic for a level, so an episode's frames and actions are identical in every run and
process.

Alignment: `actions[t]` is the action applied (`frame_skip` times) after frame t, i.e. the one
that leads to frame t+1. The last frame's action is the policy's next choice; it is not applied
when the recording stops at `max_steps`. Procgen resets by itself when an episode ends, so the
observation flagged `first` belongs to the next episode and is never recorded; Atari does not
auto-reset, so its final (game-over) frame is kept.
"""

from __future__ import annotations

import contextlib
import difflib
import io
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageOps

from data_pipeline import driving
from data_pipeline.config import ShardConfig
from data_pipeline.schema import ActionSpace, Clip

PROCGEN_FPS = 15.0  # procgen's own render rate (ToBaselinesVecEnv metadata)
ALE_HZ = 60.0  # the Atari 2600 frame rate; v5 envs show every `frameskip`-th frame
PROCGEN_MAX_LEVEL = 2**31 - 1  # procgen keeps start_level in a C int
PROCGEN_LICENSE = "MIT (openai/procgen, via procgen-mirror)"
ALE_LICENSE = (
    "GPL-2.0 (Arcade Learning Environment, ale-py); Atari 2600 ROM copyright its publisher, "
    "bundled with ale-py for research use"
)


def episode_units(spec: str, cfg: ShardConfig) -> list[EpisodeUnit]:
    """`procgen:<env>` or `atari:<Game>` -> one unit per episode i in range(cfg.episodes),
    playing level seed cfg.level_start + i. Raises ValueError for an unknown family or game."""
    family, _, name = spec.partition(":")
    if family not in _CANONICAL_NAME:
        raise ValueError(
            f"unknown game source {spec!r}; use 'procgen:<env>', 'atari:<Game>' or "
            f"'gym:{driving.CAR_RACING}'"
        )
    env_name = _CANONICAL_NAME[family](name, cfg)
    seeds = range(cfg.level_start, cfg.level_start + cfg.episodes)
    return [
        EpisodeUnit(
            uid=f"{family}-{env_name}-L{seed:06d}",
            game=f"{family}:{env_name}",
            family=family,
            env_name=env_name,
            level_seed=seed,
        )
        for seed in seeds
    ]


@cache
def _procgen() -> Any:
    """Import procgen with its `gym` dependency's unmaintained-gym notice (printed to stderr on
    every import, in every worker process; we use gymnasium) kept off the job's output."""
    with contextlib.redirect_stderr(io.StringIO()):
        import procgen
        import procgen.env
    return procgen


def _procgen_name(name: str, cfg: ShardConfig) -> str:
    penv = _procgen().env
    DISTRIBUTION_MODE_DICT, ENV_NAMES = penv.DISTRIBUTION_MODE_DICT, penv.ENV_NAMES

    env_name = name.lower()
    if env_name not in ENV_NAMES:
        raise ValueError(f"unknown procgen game {name!r}; valid: {', '.join(ENV_NAMES)}")
    # "exploration" pins one fixed level, which would make every episode's level seed a lie.
    modes = [m for m in DISTRIBUTION_MODE_DICT if m != "exploration"]
    if cfg.distribution_mode not in modes:
        raise ValueError(
            f"unknown procgen --distribution-mode {cfg.distribution_mode!r}; valid: "
            f"{', '.join(modes)}"
        )
    last = cfg.level_start + cfg.episodes - 1
    if last > PROCGEN_MAX_LEVEL:
        raise ValueError(f"procgen level seeds must be <= {PROCGEN_MAX_LEVEL}, got up to {last}")
    return env_name


def _atari_name(name: str, cfg: ShardConfig) -> str:
    games = _atari_games()
    if name.lower() not in games:
        close = difflib.get_close_matches(name.lower(), games, n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(games[c] for c in close)}?" if close else ""
        raise ValueError(
            f"unknown Atari game {name!r}: there is no gymnasium env ALE/{name}-v5 among the "
            f"{len(games)} ALE games{hint}"
        )
    return games[name.lower()]


@lru_cache(maxsize=1)
def _atari_games() -> dict[str, str]:
    """Lower-case name -> the ALE spelling (e.g. "montezumarevenge" -> "MontezumaRevenge")."""
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    names = [k[4:-3] for k in gym.envs.registry if k.startswith("ALE/") and k.endswith("-v5")]
    return {n.lower(): n for n in names}


def _gym_name(name: str, cfg: ShardConfig) -> str:
    if name.lower() != driving.CAR_RACING.lower():
        raise ValueError(f"unknown gym source {name!r}; the gym family has {driving.CAR_RACING}")
    return driving.CAR_RACING


# Family -> validator returning the canonical env name; a dict so new families plug in here.
_CANONICAL_NAME: dict[str, Callable[[str, ShardConfig], str]] = {
    "procgen": _procgen_name,
    "atari": _atari_name,
    "gym": _gym_name,
}


@dataclass(frozen=True)
class EpisodeUnit:
    """One episode of one game on one level seed; picklable, so any worker can record it."""

    uid: str
    game: str  # the canonical SOURCE spec, e.g. "procgen:coinrun"; keys level seeds per game
    family: str  # "procgen" | "atari" | "gym"
    env_name: str  # "coinrun", "Breakout", ...
    level_seed: int

    def action_space(self) -> ActionSpace:
        if self.family == "procgen":
            return procgen_action_space()
        if self.family == "gym":
            return ActionSpace("continuous", shape=(3,), names=driving.ACTION_NAMES)
        return atari_action_space(self.env_name)

    def clips(self, cfg: ShardConfig, stats: Counter[str]) -> Iterator[Clip]:
        extras: dict[str, np.ndarray] = {}
        if self.family == "gym":
            drive = driving.record_drive(self.level_seed, cfg.max_steps, cfg.frame_skip, cfg.seed)
            fitted = [fit_frame(driving.without_hud(f), cfg.size) for f in drive.frames]
            frames_THWC = np.stack(fitted)
            actions_T = drive.actions
            extras = {"rewards": drive.rewards, "ends": drive.ends, "on_road": drive.on_road}
        else:
            frames_THWC, actions_T = self.record(cfg)
        if len(frames_THWC) < cfg.frames:
            stats["too_short"] += 1
            return
        fps = self.fps(cfg)
        meta: dict[str, Any] = {
            "source": self.game,
            "kind": "game",
            "game": self.env_name,
            "level_seed": self.level_seed,
            "fps": fps,
            "action_space": self.action_space().to_dict(),
            "policy": policy_description(cfg),
        }
        if self.family == "procgen":
            meta["license"] = PROCGEN_LICENSE
            meta["distribution_mode"] = cfg.distribution_mode
        elif self.family == "gym":
            meta["license"] = driving.LICENSE
            meta["policy"] = driving.POLICY
        else:
            meta["license"] = ALE_LICENSE
        for start in range(0, len(frames_THWC) - cfg.frames + 1, cfg.stride):
            stop = start + cfg.frames
            # episode_step counts recorded frames; the env took episode_step * frame_skip steps.
            step_meta: dict[str, Any] = {"episode_step": start, "start_time": round(start / fps, 6)}
            if "on_road" in extras:  # the share of the clip's frames with a wheel on the track
                step_meta["on_road"] = round(float(extras["on_road"][start:stop].mean()), 4)
            yield Clip(
                frames_THWC[start:stop], actions_T[start:stop], {**meta, **step_meta},
                rewards=extras["rewards"][start:stop] if extras else None,
                ends=extras["ends"][start:stop] if extras else None,
            )  # fmt: skip

    def record(self, cfg: ShardConfig) -> tuple[np.ndarray, np.ndarray]:
        """Play the episode: frames uint8 (T, size, size, 3) and actions int64 (T,)."""
        game = self.open(cfg)
        try:
            return record_episode(game, self.action_space().n or 1, cfg, self.level_seed)
        finally:
            game.close()

    def open(self, cfg: ShardConfig) -> Game:
        """A fresh env at this unit's level; the caller closes it."""
        if self.family == "procgen":
            return ProcgenGame(self.env_name, self.level_seed, cfg.distribution_mode)
        if self.family == "gym":
            raise ValueError(f"{self.game} is driven by data_pipeline.driving, not a random policy")
        return AtariGame(self.env_name, self.level_seed)

    def fps(self, cfg: ShardConfig) -> float:
        if self.family == "procgen":
            return PROCGEN_FPS / cfg.frame_skip
        if self.family == "gym":
            return driving.CAR_RACING_HZ / cfg.frame_skip
        import gymnasium as gym

        _atari_games()  # registers the ALE envs
        env_skip = gym.spec(f"ALE/{self.env_name}-v5").kwargs["frameskip"]
        return ALE_HZ / (env_skip * cfg.frame_skip)


@lru_cache(maxsize=1)
def procgen_action_space() -> ActionSpace:
    ProcgenGym3Env = _procgen().ProcgenGym3Env

    # get_combos() reads no instance state and is the same for every procgen game, so the
    # names come without building an env (seconds, the first time in a process).
    combos = ProcgenGym3Env.get_combos(None)
    names = tuple("+".join(keys) or "NOOP" for keys in combos)
    return ActionSpace("discrete", n=len(names), names=names)


@cache
def atari_action_space(env_name: str) -> ActionSpace:
    """ALE's minimal action set for the game; needs an env (~0.4 s), hence the cache."""
    game = AtariGame(env_name, level_seed=0)
    try:
        ale_env: Any = game.env.unwrapped  # an ale_py AtariEnv; gymnasium types it as Env
        names = tuple(ale_env.get_action_meanings())
    finally:
        game.close()
    return ActionSpace("discrete", n=len(names), names=names)


class Game(Protocol):
    def reset(self) -> np.ndarray:
        """The episode's first frame, (H, W, 3) uint8."""
        ...

    def step(self, action: int, repeat: int) -> tuple[np.ndarray | None, bool]:
        """Apply `action` `repeat` times -> (frame after it or None if unobservable, ended)."""
        ...

    def close(self) -> None: ...


class ProcgenGame:
    def __init__(self, env_name: str, level_seed: int, distribution_mode: str) -> None:
        ProcgenGym3Env = _procgen().ProcgenGym3Env

        # rand_seed only drives the choice among num_levels levels (here one), but fixing it
        # keeps OS entropy out of the env. num_threads=0 steps in this thread: with one env
        # a worker pool is pure hand-off cost (measured ~9-10k vs ~7.5k steps/s).
        self.env = ProcgenGym3Env(
            num=1,
            env_name=env_name,
            start_level=level_seed,
            num_levels=1,
            distribution_mode=distribution_mode,
            rand_seed=level_seed,
            num_threads=0,
        )

    def reset(self) -> np.ndarray:
        _, ob, _ = self.env.observe()
        return np.array(ob["rgb"][0])  # copy: the env reuses its observation buffer

    def step(self, action: int, repeat: int) -> tuple[np.ndarray | None, bool]:
        act = np.array([action], dtype=np.int32)
        for _ in range(repeat):
            self.env.act(act)
            _, ob, first = self.env.observe()
            if first[0]:  # auto-reset: this observation opens the next episode
                return None, True
        return np.array(ob["rgb"][0]), False

    def close(self) -> None:
        self.env.close()


class AtariGame:
    def __init__(self, env_name: str, level_seed: int) -> None:
        import gymnasium as gym

        _atari_games()  # registers the ALE envs
        # v5 defaults kept: frameskip 4 and ALE's own sticky actions (p=0.25, Machado et al.
        # 2018), seeded by reset(seed), so episodes stay deterministic.
        self.env = gym.make(f"ALE/{env_name}-v5")
        self.level_seed = level_seed

    def reset(self) -> np.ndarray:
        obs, _ = self.env.reset(seed=self.level_seed)
        return np.asarray(obs)

    def step(self, action: int, repeat: int) -> tuple[np.ndarray | None, bool]:
        for _ in range(repeat):
            obs, _, terminated, truncated, _ = self.env.step(action)
            if terminated or truncated:  # no auto-reset: the final frame is this episode's
                return np.asarray(obs), True
        return np.asarray(obs), False

    def close(self) -> None:
        self.env.close()


def record_episode(
    game: Game, n_actions: int, cfg: ShardConfig, level_seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Play one episode with the sticky random policy -> frames (T, size, size, 3) uint8 and
    actions (T,) int64, T <= cfg.max_steps."""
    rng = policy_rng(cfg, level_seed)
    policy = sticky_actions(n_actions, cfg.sticky_min, cfg.sticky_max, rng, cfg.action_weights)
    frames = [fit_frame(game.reset(), cfg.size)]
    actions: list[int] = []
    ended = False
    while True:
        actions.append(next(policy))
        if ended or len(frames) == cfg.max_steps:
            break
        frame, ended = game.step(actions[-1], cfg.frame_skip)
        if frame is None:
            break
        frames.append(fit_frame(frame, cfg.size))
    return np.stack(frames), np.asarray(actions, dtype=np.int64)


def policy_rng(cfg: ShardConfig, level_seed: int) -> np.random.Generator:
    # SeedSequence takes non-negative entropy; the modulus keeps a negative --seed usable.
    return np.random.default_rng([cfg.seed % 2**64, level_seed])


def policy_description(cfg: ShardConfig) -> str:
    drawn = "uniformly" if cfg.action_weights is None else f"by weights {cfg.action_weights}"
    return (
        f"random, sticky: each action drawn {drawn} and held U[{cfg.sticky_min}, "
        f"{cfg.sticky_max}] steps; frame_skip {cfg.frame_skip}"
    )


def sticky_segments(
    n_actions: int,
    hold_min: int,
    hold_max: int,
    rng: np.random.Generator,
    weights: list[float] | None = None,
) -> Iterator[tuple[int, int]]:
    """Endless (action, hold) pairs: action in [0, n_actions) (uniform, or drawn by `weights`,
    one per action), hold uniform in [min, max]."""
    p = None
    if weights is not None:
        if len(weights) != n_actions:
            raise ValueError(f"action_weights has {len(weights)} entries; the game has {n_actions}")
        p = np.asarray(weights, dtype=np.float64) / sum(weights)
    while True:
        action = int(rng.integers(n_actions)) if p is None else int(rng.choice(n_actions, p=p))
        yield action, int(rng.integers(hold_min, hold_max + 1))


def sticky_actions(
    n_actions: int,
    hold_min: int,
    hold_max: int,
    rng: np.random.Generator,
    weights: list[float] | None = None,
) -> Iterator[int]:
    """The per-step actions of sticky_segments: each action repeated for its hold."""
    for action, hold in sticky_segments(n_actions, hold_min, hold_max, rng, weights):
        for _ in range(hold):
            yield action


def fit_frame(frame_HWC: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) -> (size, size, 3): short side to `size`, centre crop; as is when it fits."""
    if frame_HWC.shape[:2] == (size, size):
        return frame_HWC
    image = Image.fromarray(frame_HWC)
    # PIL resamples with an antialiasing filter when shrinking, so thin sprites do not alias.
    fitted = ImageOps.fit(image, (size, size), method=Image.Resampling.BILINEAR)
    return np.asarray(fitted)
