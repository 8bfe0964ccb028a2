"""Steps of players who play at the same moment, run as one engine call.

Every player's held key runs in its own server thread and asks `StepBatcher.step` for the next
frame. Whoever asks while no engine call is running leads: it takes every request waiting (in
order of arrival, up to `max_batch`, after waiting up to GATHER_S for as many as the last call
had), steps them with `WorldSimulator.step_many` and hands each
its result; requests arriving meanwhile wait for the next call. So a step waits at most for
the call in progress, nobody starves, and N players cost one forward pass of batch N instead
of N passes (on 2 cores with the shipped world: 36 FPS for 4 players stepped apart, 64 FPS
stepped together). `step_many` keeps each world's own random stream and renders it alone, so
a player's frames do not depend on who else plays.

The engine lock is shared with the app's other model work (starts, undo, previews), so the
models run one call at a time.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field

from torch import Tensor

from simulator.engine.batching import groups
from simulator.engine.sampling_config import SamplingConfig
from simulator.engine.world_simulator import WorldSimulator, WorldState

MAX_BATCH = 16  # worlds in one call; more wait for the next
# How long a leader waits for the players of the last call to ask again before it runs what it
# has: players who just got their frames ask again a few ms apart (after their frame is sent),
# and without the wait the first of them would step alone, the rest together after it.
GATHER_S = 0.004


@dataclass
class _Request:
    state: WorldState
    action: int | list[float]  # an id, or a continuous world's controls
    sampling: SamplingConfig
    result: tuple[Tensor, WorldState] | None = None
    error: BaseException | None = None
    seconds: float = 0.0  # the engine call it was part of
    batch: int = 1  # worlds in that call
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class Stepped:
    frame_BCHW: Tensor
    state: WorldState
    seconds: float  # the engine call this step was part of
    batch: int  # worlds stepped in that call


class StepBatcher:
    def __init__(
        self, engine: WorldSimulator, lock: threading.Lock, max_batch: int = MAX_BATCH
    ) -> None:
        self.engine, self.lock, self.max_batch = engine, lock, max_batch
        self._waiting: list[_Request] = []
        self._mutex = threading.Lock()
        self._last_call = 1  # worlds in the last call: as many are likely to ask again

    def step(
        self, state: WorldState, action: int | list[float], sampling: SamplingConfig
    ) -> Stepped:
        """The next frame and state of one world (batch 1), stepped with whoever else asks."""
        request = _Request(state, action, sampling)
        with self._mutex:
            self._waiting.append(request)
        while not request.done.is_set():
            with self.lock:  # waits for the call in progress, which may have taken this one
                if not request.done.is_set():
                    self._gather()
                    self._run_waiting()  # lead: everyone waiting, this one included
        if request.error is not None:
            raise request.error
        assert request.result is not None
        frame, new = request.result
        return Stepped(frame, new, request.seconds, request.batch)

    def _gather(self) -> None:
        deadline = time.perf_counter() + GATHER_S
        while len(self._waiting) < self._last_call and time.perf_counter() < deadline:
            time.sleep(0.0005)

    def _run_waiting(self) -> None:
        with self._mutex:
            batch, self._waiting = (
                self._waiting[: self.max_batch],
                self._waiting[self.max_batch :],
            )
        self._last_call = len(batch)
        for group in groups([dataclasses.astuple(r.sampling) for r in batch]):
            requests = [batch[i] for i in group]
            sampling = requests[0].sampling  # worlds of one call share their sampling
            began = time.perf_counter()
            try:
                results = self.engine.step_many(
                    [r.state for r in requests], [r.action for r in requests], sampling
                )
                failure: Exception | None = None
            except Exception as err:  # every player of this call hears of it
                results, failure = [], err
            seconds = time.perf_counter() - began
            for i, request in enumerate(requests):
                request.seconds = seconds
                request.batch = len(requests)
                request.error = failure
                request.result = results[i] if failure is None else None
                request.done.set()
