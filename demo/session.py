"""One player's world: the state the engine steps, the frames shown so far, undo and replay.

A `PlaySession` belongs to one browser session (the app keeps it in a `gr.State`), so players
never share a world; the engine (models, no per-player state) is shared. Engine states are
values, so undo is a pop, and a preview, or a step made ahead of the player's keys (`make`,
then `take` if the keys still ask for it), is a branch that may be thrown away. The session
records what reproduces it: the start frames, the seed and every step's action and sampling
settings; replaying that record (`replay`) gives the same frames.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from torch import Tensor

from demo.batcher import StepBatcher
from simulator.engine.sampling_config import SamplingConfig
from simulator.engine.state import WorldState
from simulator.engine.world_simulator import WorldSimulator
from worldsim.io.media import to_uint8_clips

MAX_UNDO = 32  # states kept for undo: each holds the model caches of a whole context window
MAX_FRAMES = 3600  # frames kept for the download (four minutes at 15 FPS); older ones drop


@dataclass
class Start:
    """What a session starts from: prompt frames (T, H, W, 3) uint8, the T - 1 actions between
    them (None for one frame, or for a latent world's LAM to infer), and where they came from."""

    frames: np.ndarray
    actions: np.ndarray | None
    label: str


@dataclass
class Step:
    action: int | list[float]  # an action id, or a continuous world's control values
    sampling: SamplingConfig


@dataclass
class Made:
    """A next frame made from `base` (the session's state then), not yet taken."""

    base: WorldState
    step: Step
    frame_BCHW: Tensor
    state: WorldState
    seconds: float  # the engine call it was part of
    batch: int  # worlds stepped in that call


@dataclass
class PlaySession:
    engine: WorldSimulator
    start: Start
    seed: int
    steps: list[Step] = field(default_factory=list)  # since the start, undone ones removed
    frames: deque[np.ndarray] = field(default_factory=lambda: deque(maxlen=MAX_FRAMES))
    history: deque[WorldState] = field(default_factory=lambda: deque(maxlen=MAX_UNDO + 1))
    last_step_s: float = 0.0  # engine time of the newest step
    last_batch: int = 1  # worlds stepped in that engine call (players stepped together)
    batcher: StepBatcher | None = None  # steps with other players; None: alone
    # Held by whatever changes the session (a held key's stream, a button), so only one thing
    # steps a world at a time.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    closed: bool = False  # its player left: history and frames are freed, nothing steps it
    controls: list[float] = field(default_factory=list)  # a continuous world's current controls

    @classmethod
    def begin(
        cls, engine: WorldSimulator, start: Start, seed: int, batcher: StepBatcher | None = None
    ) -> PlaySession:
        session = cls(engine, start, seed, batcher=batcher)
        session._reset()
        return session

    @property
    def state(self) -> WorldState:
        return self.history[-1]

    @property
    def frame(self) -> np.ndarray:
        """The newest frame, uint8 (H, W, 3)."""
        return self.frames[-1]

    @property
    def frame_index(self) -> int:
        return self.state.frame_index

    def step(self, action: int | list[float], sampling: SamplingConfig) -> np.ndarray:
        return self.take(self.make(action, sampling))

    def make(
        self, action: int | list[float], sampling: SamplingConfig, base: WorldState | None = None
    ) -> Made:
        """The next frame under `action` from `base` (default: the current state), with the
        other players' steps if the session has a batcher. The session does not change."""
        base = self.state if base is None else base
        began = time.perf_counter()
        if self.batcher is None:
            frame, state = self.engine.step(base, [action], sampling=sampling)
            seconds, batch = time.perf_counter() - began, 1
        else:
            stepped = self.batcher.step(base, action, sampling, who=self)
            frame, state = stepped.frame_BCHW, stepped.state
            seconds, batch = stepped.seconds, stepped.batch
        return Made(base, Step(action, sampling), frame, state, seconds, batch)

    def take(self, made: Made) -> np.ndarray:
        """Show a frame `make` made from the current state: the world moves on."""
        if made.base is not self.state:
            raise ValueError("that frame was made from another state than the session's")
        self.last_step_s, self.last_batch = made.seconds, made.batch
        self.history.append(made.state)
        self.steps.append(made.step)
        # A copy, not a view of torch's buffer: kept frames then cost 22 KB each in the server's
        # memory instead of 36 (measured over 1000 frames), so MAX_FRAMES bounds a session at
        # about 80 MB.
        self.frames.append(to_uint8_clips(made.frame_BCHW[0]).copy())
        return self.frame

    def undo(self) -> bool:
        """Step back one frame; False when no older state is kept."""
        if len(self.history) < 2:
            return False
        self.history.pop()
        self.steps.pop()
        self.frames.pop()
        return True

    def restart(self, seed: int | None = None) -> np.ndarray:
        """Back to the start frames (with a new seed, if given)."""
        if seed is not None:
            self.seed = seed
        self._reset()
        return self.frame

    def preview(self, actions: list[int], sampling: SamplingConfig) -> list[np.ndarray]:
        """The next frame under each action, as branches: the session does not move."""
        state = self.state
        many = [self.engine.step(state, [a], sampling=sampling)[0][0] for a in actions]
        return [to_uint8_clips(frame) for frame in many]

    def close(self) -> None:
        """Its player left: free the world states and frames (the app may keep the emptied
        session for a while; Gradio keeps a closed tab's state an hour)."""
        with self.lock:
            self.closed = True
            self.history.clear()
            self.frames.clear()
            self.steps.clear()

    def video(self) -> np.ndarray:
        """Every frame kept, (T, H, W, 3) uint8."""
        return np.stack(list(self.frames))

    def replay(self) -> np.ndarray:
        """The session's frames recomputed from its record alone (start, seed, steps)."""
        fresh = PlaySession.begin(self.engine, self.start, self.seed)
        for step in self.steps:
            fresh.step(step.action, step.sampling)
        return fresh.video()

    def _reset(self) -> None:
        prompt = self.start.frames[None]
        actions = None if self.start.actions is None else self.start.actions[None]
        state = self.engine.reset(prompt, prompt_actions=actions, seed=self.seed)
        self.history.clear()
        self.steps.clear()
        self.frames.clear()
        self.history.append(state)
        self.frames.append(to_uint8_clips(state.frame_BCHW[0]))
        rest = self.engine.action_space.idle()  # a continuous world starts at rest
        self.controls = list(rest) if isinstance(rest, list) else []
