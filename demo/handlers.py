"""What the app does on each player event, without Gradio: the app (demo/app.py) wires these to
buttons and keys, tests call them directly. Each handler takes the player's own `PlaySession`
(or None before the first start) and returns the new session and what to show; a problem the
player can fix raises `PlayError`, and no handler touches another player's session.

A held key is a stream (`hold`): it steps the world frame after frame, each step batched with
the other players' (demo/batcher.py), for as long as the keys the page last sent (`set_keys`)
mean an action. While a player steps alone, the next frame is already being made under the keys
held then while the last is sent (`_ahead`); it is shown only if the keys still ask for it,
else made again, so the world only ever moves by the keys the player holds. Players are known
by an id (the browser session's); `forget` frees a player's world when the page closes.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from demo.batcher import MAX_BATCH, StepBatcher
from demo.controls import DIGITS, Controls, Wheel, controls_for, wheel_for
from demo.session import Made, PlaySession, Start
from demo.uploads import BuiltinStart, PlayError, builtin_starts, load_start
from demo.view import View, data_uri
from simulator.engine.prompt import LoadedPrompt, prompt_and_actions
from simulator.engine.sampling_config import SamplingConfig
from simulator.engine.world_simulator import WorldSimulator
from worldsim.io.media import write_video

DOWNLOAD_FPS = 15.0  # CoinRun's own frame rate
DOWNLOAD_SCALE = 4  # 64x64 frames are enlarged 4x (pixel repetition) in downloads


@dataclass(frozen=True)
class Settings:
    """The advanced panel: MaskGIT steps, temperature and key guidance of the next frames, the
    seed of the next (re)start."""

    steps: int
    temperature: float
    seed: int
    guidance: float | None = None  # None: the world's own (world.json)

    def sampling(self, base: SamplingConfig) -> SamplingConfig:
        try:
            steps, temperature = int(self.steps), float(self.temperature)
            guidance = None if self.guidance is None else float(self.guidance)
        except (TypeError, ValueError) as err:
            raise PlayError(f"steps, temperature and guidance must be numbers: {err}") from err
        try:
            return base.override(steps=steps, temperature=temperature, guidance=guidance)
        except ValueError as err:
            raise PlayError(str(err)) from err


class PlayHandlers:
    def __init__(
        self, engine: WorldSimulator, world: Path, shard_clips: Sequence[str] = ()
    ) -> None:
        self.engine = engine
        self.world = world
        self.controls: Controls = controls_for(engine.action_space)
        # A world of continuous controls is driven: keys ramp the controls (demo/controls.py).
        self.wheel: Wheel | None = wheel_for(engine.action_space) if self.continuous else None
        self.starts: list[BuiltinStart] = builtin_starts(world)
        self.shard_clips = list(shard_clips)  # "SHARD.tar#KEY" the server was started with
        self.downloads = Path(tempfile.mkdtemp(prefix="worldsim-play-"))
        self.engine_lock = threading.Lock()  # the models run one call at a time
        self.batcher = StepBatcher(engine, self.engine_lock)
        self.ahead = ThreadPoolExecutor(MAX_BATCH, thread_name_prefix="worldsim-ahead")
        self.players: dict[str, PlaySession] = {}  # player id -> the world it plays now
        # player id -> (number, keys) of the newest key change its page sent (see `_note_keys`)
        self.keys: dict[str, tuple[int, str]] = {}

    @property
    def continuous(self) -> bool:
        return self.engine.action_space.continuous

    @property
    def default_sampling(self) -> SamplingConfig:
        return self.engine.sampling

    @property
    def guidable(self) -> bool:
        """Whether the world's dynamics can be sampled with key guidance (the slider shows)."""
        return self.engine.dynamics.cfg.guidable

    def sampling(self, settings: Settings) -> SamplingConfig:
        """The world's sampling with the player's settings applied."""
        sampling = settings.sampling(self.default_sampling)
        try:
            self.engine.dynamics.cfg.check_guidance(sampling.guidance)
        except ValueError as err:
            raise PlayError(str(err)) from err
        return sampling

    # -- starting ---------------------------------------------------------------------------
    def start_builtin(
        self, index: int, settings: Settings, player: str = "local"
    ) -> tuple[PlaySession, View]:
        if not 0 <= index < len(self.starts):
            raise PlayError(f"there is no built-in start frame {index}")
        start = self.starts[index]
        loaded = load_start(start.path, self._max_prompt)
        return self._begin(loaded, start.label, settings, player)

    def start_shard_clip(
        self, clip: str, settings: Settings, player: str = "local"
    ) -> tuple[PlaySession, View]:
        if clip not in self.shard_clips:  # only clips the server offered, never a typed path
            raise PlayError(f"{clip!r} is not one of the shard clips offered")
        label = clip.rsplit("/", 1)[-1]
        return self._begin(load_start(clip, self._max_prompt, label), label, settings, player)

    def start_upload(
        self, path: str | None, settings: Settings, player: str = "local"
    ) -> tuple[PlaySession, View]:
        if not path:
            raise PlayError("no file was uploaded")
        label = f"upload {Path(path).name}"
        return self._begin(load_start(path, self._max_prompt, label), label, settings, player)

    # -- playing ----------------------------------------------------------------------------
    def hold(
        self, held: str, session: PlaySession | None, settings: Settings, player: str = "local"
    ) -> Iterator[tuple[PlaySession, View]]:
        """Frames for as long as the player's held keys (`held` now, then whatever `set_keys`
        says) mean an action: one step in flight, batched with the other players'. Ends when
        the keys are released or the player leaves."""
        session, sampling = self._require(session), self.sampling(settings)
        self._note_keys(player, held)
        ahead: Future[Made] | None = None
        try:
            while True:
                action = self._next_action(session, self._held(player))
                if action is None:
                    return
                with session.lock:
                    if session.closed:
                        return
                    made = ahead.result() if ahead is not None else None
                    if made is None or not _same(made, session.state, action, sampling):
                        made = session.make(action, sampling)
                    session.take(made)
                    ahead = self._ahead(session, self._held(player), sampling)
                    view = self.view(session)
                yield session, view
        finally:
            if ahead is not None:
                ahead.exception()  # wait: its step would count the player as still stepping
            self.batcher.stopped(session)

    def _ahead(
        self, session: PlaySession, held: str, sampling: SamplingConfig
    ) -> Future[Made] | None:
        """Start making the frame that follows under the keys held now, while the page is sent
        the last; None if they mean no action, or if other players are stepping: then the
        engine is busy with their steps anyway, and steps made ahead only crowded the 2 cores
        (8 players 53 FPS in all against 58-60 without; one player alone 40-43 against 38-39,
        `benchmarks/bench_play.py`)."""
        action = self._action_under(session.controls, held)
        if action is None or not self.batcher.alone(session):
            return None
        return self.ahead.submit(session.make, action, sampling, session.state)

    def _held(self, player: str) -> str:
        return self.keys.get(player, (0, ""))[1]

    def _next_action(self, session: PlaySession, held: str) -> int | list[float] | None:
        """The action of the next frame under the keys held, None when the stream should end;
        a driven world's controls move a step toward the keys."""
        action = self._action_under(session.controls, held)
        if isinstance(action, list):  # a driven world's controls
            session.controls = action
        return action

    def _action_under(self, controls: list[float], held: str) -> int | list[float] | None:
        """The next frame's action under the keys held, from a driven world's `controls`; None
        when there is none (no key that means an action; a driven world also eases its controls
        back to rest first)."""
        if self.wheel is None:
            return self.controls.action_for(held)
        ramped = self.wheel.ramp(controls, held)
        if not held and ramped == controls == self.wheel.rest:
            return None
        return ramped

    def set_controls(
        self, values: Sequence[float], session: PlaySession | None
    ) -> tuple[PlaySession, View]:
        """A continuous world's controls set by the sliders (used by the next frames)."""
        session = self._require(session)
        try:
            controls = [float(v) for v in values]
            self.engine.action_space.tensor(controls, (1,), "cpu")
        except (TypeError, ValueError) as err:
            raise PlayError(f"those controls do not fit this world: {err}") from err
        session.controls = controls
        return session, self.view(session)

    def set_keys(self, held: str, player: str = "local") -> None:
        """The keys the player's page holds now (what a running `hold` steps with next)."""
        self._note_keys(player, held)

    def _note_keys(self, player: str, held: str | None) -> None:
        """Keep the newest of the key changes a page sends. The page numbers them ("right,up#7",
        demo/static/play.js): the stream's first keys come through the queue and may arrive
        after a later change sent outside it, which must not be undone. Unnumbered keys (tests,
        API callers) always count."""
        keys, _, number = (held or "").partition("#")
        count = int(number) if number.isdigit() else None
        newest = self.keys.get(player, (-1, ""))[0]
        if count is None or count > newest:
            self.keys[player] = (newest if count is None else count, keys)

    def step(
        self, action: int | list[float], session: PlaySession | None, settings: Settings
    ) -> tuple[PlaySession, View]:
        """One frame under `action` (an id; for a continuous world, its controls)."""
        session = self._require(session)
        try:
            self.engine.action_space.tensor(action, (1,), "cpu")
        except ValueError as err:
            raise PlayError(f"action {action} is not one of this world's actions ({err})") from err
        with session.lock:
            session.step(action, self.sampling(settings))
            return session, self.view(session)

    def undo(self, session: PlaySession | None) -> tuple[PlaySession, View]:
        session = self._require(session)
        with session.lock:
            if not session.undo():
                raise PlayError("nothing to undo (the oldest kept frame is shown)")
            return session, self.view(session)

    def restart(self, session: PlaySession | None, settings: Settings) -> tuple[PlaySession, View]:
        session = self._require(session)
        with session.lock, self.engine_lock:
            session.restart(_seed(settings))
            return session, self.view(session)

    def forget(self, player: str) -> None:
        """The player's page closed: stop its stream and free its world."""
        self.keys.pop(player, None)
        session = self.players.pop(player, None)
        if session is not None:
            self.batcher.stopped(session)
            session.close()

    # -- showing ----------------------------------------------------------------------------
    def view(self, session: PlaySession) -> View:
        parts, ms = [f"frame {session.frame_index}"], None
        if session.steps:
            action = self._label(session.steps[-1].action)
            ms = session.last_step_s * 1000
            together = f" ({session.last_batch} players at once)" if session.last_batch > 1 else ""
            parts += [action, f"{ms:.0f} ms to generate{together}"]
        parts += [f"from {session.start.label}", f"seed {session.seed}"]
        controls = list(session.controls) if self.wheel is not None else None
        return View(session.frame, session.frame_index, ms, " · ".join(parts), controls)

    def _label(self, action: int | list[float]) -> str:
        if isinstance(action, int):
            return self.controls.controls[action].label
        names = self.engine.action_space.names or [str(i) for i in range(len(action))]
        return " ".join(f"{n} {v:+.2f}" for n, v in zip(names, action, strict=True))

    def header(self) -> str:
        """The line above the page: the world, its actions and the keys that give them."""
        if self.wheel is not None:
            return (
                f"**worldsim play**: `{self.world.name}`, driven by "
                f"{self.engine.action_space.describe()}. Hold ← → to steer, ↑ for gas, ↓ to "
                "brake (or WASD): the controls move a step a frame and ease back when let go; "
                "the sliders show and set them. P pauses."
            )
        reached = min(len(self.controls.controls), len(DIGITS))  # digits reach the first ten
        keys = f"digits 1-{DIGITS[reached - 1]}" if reached > 1 else "digit 1"
        how = (
            f"Hold the arrow keys, WASD or Space, or press {keys}"
            if self.controls.steered_by_directions
            else f"Press {keys}"
        )
        names = ", ".join(c.label for c in self.controls.controls)
        return (
            f"**worldsim play**: `{self.world.name}`, steered by {len(self.controls.controls)} "
            f"actions ({names}). {how} (the legend lists which); P pauses."
        )

    def legend(
        self, session: PlaySession | None, settings: Settings, previews_wanted: bool = True
    ) -> str:
        """The keys, what each does, and (given a session and `previews_wanted`) a preview of
        each from the current frame. The table carries that frame's index (`data-frame`), so
        the page can mark the previews stale once the world moves on (demo/static/play.js)."""
        if self.wheel is not None:  # keys ramp controls: no per-action previews
            legend = self.wheel.legend()
            cells = "".join(f"<tr><td>{k}</td><td>{what}</td></tr>" for k, what in legend)
            return f'<table class="ws-legend"><tr><th>keys</th><th>control</th></tr>{cells}</table>'
        shown = self.preview_actions()
        previews: dict[int, np.ndarray] = {}
        if session is not None and previews_wanted:
            sampling = self.sampling(settings)
            with session.lock, self.engine_lock:
                previews = dict(zip(shown, session.preview(shown, sampling), strict=True))
        rows = []
        for action in shown:
            control = self.controls.controls[action]
            thumb = previews.get(action)
            img = "" if thumb is None else f'<img class="ws-thumb" src="{data_uri(thumb)}">'
            rows.append(f"<tr><td>{control.keys}</td><td>{control.label}</td><td>{img}</td></tr>")
        if previews and session is not None:
            frame = f' data-frame="{session.frame_index}"'
            preview = f"next frame after frame {session.frame_index}"
        else:
            frame, preview = "", "next frame (press preview)"
        head = f'<tr><th>keys</th><th>action</th><th class="ws-preview-head">{preview}</th></tr>'
        return f'<table class="ws-legend"{frame}>{head}{"".join(rows)}</table>'

    def preview_actions(self) -> list[int]:
        """The actions the legend previews and the buttons show, in id order (the order of the
        digit keys): every one a key reaches by direction (plus the idle action), else the ones
        digits reach. None for a continuous world, whose keys ramp its controls."""
        if self.wheel is not None:
            return []
        idle = self.controls.idle_action
        keyed = [c.action for c in self.controls.controls if "/" in c.keys or c.action == idle]
        if len(keyed) > (idle is not None):
            return keyed
        return [c.action for c in self.controls.controls if c.keys]

    def download(self, session: PlaySession | None, suffix: str, session_id: str) -> Path:
        """The session's frames as an mp4 or GIF file (one file per player, replaced)."""
        session = self._require(session)
        if suffix not in (".mp4", ".gif"):
            raise PlayError(f"downloads are .mp4 or .gif, not {suffix!r}")
        safe = "".join(ch for ch in session_id if ch.isalnum())[:32] or "session"
        path = self.downloads / f"worldsim-{safe}{suffix}"
        return write_video(session.video(), path, DOWNLOAD_FPS, DOWNLOAD_SCALE)

    # -- internals --------------------------------------------------------------------------
    @property
    def _max_prompt(self) -> int:
        return self.engine.max_prompt_frames

    def _begin(
        self, loaded: LoadedPrompt, label: str, settings: Settings, player: str
    ) -> tuple[PlaySession, View]:
        """Start from what the world can take of the clip
        (simulator.engine.prompt.prompt_and_actions: its last frames with known or inferable
        actions between them, else its last frame). The player's previous world is freed."""
        seed = _seed(settings)
        with self.engine_lock:
            frames, between, _ = prompt_and_actions(loaded, self.engine)
            start = Start(frames, None if between is None else between[0], label)
            session = PlaySession.begin(self.engine, start, seed, self.batcher)
        old, self.players[player] = self.players.get(player), session
        if old is not None:
            old.close()
        return session, self.view(session)

    @staticmethod
    def _require(session: PlaySession | None) -> PlaySession:
        if session is None:
            raise PlayError("pick a start frame first")
        return session

    def close(self) -> None:
        self.ahead.shutdown()
        for path in self.downloads.glob("*"):
            path.unlink(missing_ok=True)
        os.rmdir(self.downloads)


def _same(made: Made, state: object, action: object, sampling: SamplingConfig) -> bool:
    """Whether `made` is the frame the session would make now."""
    return made.base is state and made.step.action == action and made.step.sampling == sampling


def _seed(settings: Settings) -> int:
    try:
        seed = int(settings.seed)
    except (TypeError, ValueError) as err:
        raise PlayError(f"the seed must be a whole number, got {settings.seed!r}") from err
    if not 0 <= seed < 2**63:
        raise PlayError(f"the seed must lie in 0 .. 2^63 - 1, got {seed}")
    return seed
