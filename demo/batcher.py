"""Steps of players who play at the same moment, run as one engine call.

Every player's held key runs in its own server thread and asks `StepBatcher.step` for the next
frame. Whoever asks while no engine call is running leads: it takes every request waiting (in
order of arrival, up to `max_batch`, after waiting up to GATHER_S for every player who stepped
in the last ACTIVE_S), steps them with `WorldSimulator.step_many` and hands each
its result; requests arriving meanwhile wait for the next call. So a step waits at most for
the call in progress, nobody starves, and N players cost one forward pass of batch N instead
of N passes (on 2 cores with the shipped world, engine alone, 4 worlds whose windows differ:
61 FPS in all stepped apart, 92 stepped together). `step_many` keeps each world's own random
stream and renders it alone, so a player's frames do not depend on who else plays.

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
from simulator.engine.state import WorldState
from simulator.engine.world_simulator import WorldSimulator

MAX_BATCH = 16  # worlds in one call; more wait for the next
# How long a leader waits for the other players who are stepping to ask again before it runs
# what it has: players who just got their frames ask again a few ms apart (after their frame is
# sent). Without the wait, two players fall into turns (one steps while the other's frame is
# sent, then the other alone), which gave two players 0.9x one player's frames in all.
GATHER_S = 0.008
ACTIVE_S = 0.5  # a player who stepped this recently counts as stepping


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
        self._stepped: dict[int, float] = {}  # id of who asked -> when it last asked

    def step(
        self,
        state: WorldState,
        action: int | list[float],
        sampling: SamplingConfig,
        who: object = None,
    ) -> Stepped:
        """The next frame and state of one world (batch 1), stepped with whoever else asks.
        `who` (the player's session) lets the batcher know how many players are stepping."""
        request = _Request(state, action, sampling)
        with self._mutex:
            self._waiting.append(request)
            self._stepped[id(request) if who is None else id(who)] = time.perf_counter()
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

    def stopped(self, who: object) -> None:
        """`who` stopped stepping (its keys were let go): nobody waits for it any more."""
        with self._mutex:
            self._stepped.pop(id(who), None)

    def alone(self, who: object) -> bool:
        """Whether no player but `who` stepped lately."""
        return self._stepping() <= {id(who)}

    def _stepping(self) -> set[int]:
        """Who stepped in the last ACTIVE_S (the others are forgotten)."""
        now = time.perf_counter()
        with self._mutex:
            self._stepped = {k: t for k, t in self._stepped.items() if now - t < ACTIVE_S}
            return set(self._stepped)

    def _gather(self) -> None:
        """Wait (up to GATHER_S) until every player stepping lately has asked."""
        stepping = min(len(self._stepping()), self.max_batch)
        deadline = time.perf_counter() + GATHER_S
        while len(self._waiting) < stepping and time.perf_counter() < deadline:
            time.sleep(0.0005)

    def _run_waiting(self) -> None:
        with self._mutex:
            batch, self._waiting = (
                self._waiting[: self.max_batch],
                self._waiting[self.max_batch :],
            )
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
