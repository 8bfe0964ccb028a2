"""`worldsim play`: steer a generated world in the browser (Gradio).

    worldsim play                       # the world shipped in the package
    worldsim play --world WORLD --shards data/coinrun_hard_eval

The page shows the newest frame (64x64, enlarged without smoothing) and plays while a key is
held (arrows / WASD / Space, digits for numbered actions): the first key starts a stream that
steps the world frame after frame (`PlayHandlers.hold`), and the page tells the server which
keys it holds as they change (demo/static/play.js), so the next frame is made while the page
shows the last and releasing the keys ends the stream. The stream's frames reach the page down
its frame channel (demo/frames.py: a websocket, raw pixels drawn on a canvas) rather than as
component updates, which cost the browser twice the CPU per frame. It also offers buttons for
the same actions, pause (P), undo, restart, sampling settings, a legend that previews each
action from the current frame on request, and the session as mp4 or GIF.

Each browser session holds its own `PlaySession` in a `gr.State`, known to the handlers by the
session's id; closing the page frees it. Players' streams run side by side and their steps are
batched into one engine call (demo/batcher.py); the other model events (starts, undo, restart,
previews) share one queue slot. Handlers are demo/handlers.py; a `PlayError` is shown to its
player as a notice, anything else as a short error, never a stack trace. `GET /worldsim/status`
says how many players the server holds.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import torch

from demo.frames import ROUTE as FRAMES_ROUTE
from demo.frames import FrameChannels
from demo.handlers import PlayHandlers, Settings
from demo.uploads import IMAGE_SUFFIXES, MAX_UPLOAD_MB, PlayError
from simulator.engine.prompt import VIDEO_SUFFIXES
from simulator.engine.state import EngineConfig
from simulator.engine.world_simulator import WorldSimulator

STATIC = Path(__file__).parent / "static"
IDLE_S = 900  # a session untouched this long is dropped (its world state and frames freed)
MAX_QUEUE = 64  # events waiting beyond this are refused ("too busy") instead of piling up
ENGINE = {"concurrency_id": "engine", "concurrency_limit": 1}  # model events other than keys
QUEUE_POLL_S = 0.005  # how often Gradio's idle queue looks for events (see `launch`)
MAX_PLAYERS = 16  # held-key streams running at once (their steps batch: demo/batcher.py)
HELD_JS = "(held, ...rest) => [window.worldsimHeld(), ...rest]"  # the keys held, read at send
# ... and the page's frame channel (demo/frames.py), "" while it is not open
HOLD_JS = "(held, channel, ...rest) => [window.worldsimHeld(), window.worldsimChannel(), ...rest]"
log = logging.getLogger(__name__)


@dataclass
class Page:
    """The components the events read and write."""

    session: gr.State
    frame: gr.HTML  # the newest frame and its status line, carried to play.js (hidden)
    steps: gr.Slider
    temperature: gr.Slider
    seed: gr.Number
    guidance: gr.Slider
    controls: dict[str, Any]  # buttons and inputs by name
    sliders: list[gr.Slider]  # a continuous world's controls, shown and set; [] otherwise

    @property
    def shown(self) -> list[Any]:
        """What a handler's (session, view) updates."""
        return [self.session, self.frame, *self.sliders]

    def outputs(self, session: Any, view: Any) -> tuple[Any, ...]:
        values = view.controls if self.sliders and view.controls else []
        return (session, view.frame_html, *values)

    def shows(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """A handler's (session, view) as the outputs of `shown`; None (keys that mean nothing
        in this world) leaves the page as it is."""

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            result = fn(*args, **kwargs)
            if result is None:
                return tuple(gr.skip() for _ in self.shown)
            return self.outputs(*result)

        return _friendly(run, len(self.shown))

    def streams(self, fn: Callable[..., Iterator[Any]]) -> Callable[..., Any]:
        """`shows` for a handler that yields (session, view) frame after frame."""

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                for session, view in fn(*args, **kwargs):
                    yield self.outputs(session, view)
            except PlayError as err:
                gr.Warning(str(err))
            except Exception as err:
                log.exception("play stream failed")
                raise gr.Error(f"the world could not do that ({type(err).__name__})") from None

        return run

    @property
    def knobs(self) -> list[Any]:
        """The inputs that make a `Settings`, in its field order."""
        return [self.steps, self.temperature, self.seed, self.guidance]


def build_app(handlers: PlayHandlers, channels: FrameChannels) -> gr.Blocks:
    with gr.Blocks(title="worldsim play", delete_cache=(600, 3600)) as app:
        gr.Markdown(handlers.header())
        page = _layout(handlers)
        _wire_play(handlers, page, channels)
        _wire_starts(handlers, page)

        def first(session: Any, n: Any, t: Any, s: Any, g: Any, request: gr.Request) -> Any:
            return handlers.start_builtin(0, Settings(n, t, s, g), _player(request))

        started = app.load(page.shows(first), [page.session, *page.knobs], page.shown, **ENGINE)
        _then_preview(handlers, page, started)

        def left(request: gr.Request) -> None:
            handlers.forget(_player(request))

        app.unload(left)
    return app


def _then_preview(handlers: PlayHandlers, page: Page, event: Any) -> None:
    """Clear the legend's previews once a new start is shown. Previews run the world once per
    action, so they come only on request (the preview button): a player's first keys never
    wait behind them."""
    event.then(
        _friendly(lambda s, *k: handlers.legend(s, Settings(*k), previews_wanted=False), 1),
        [page.session, *page.knobs], page.controls["legend"],
    )  # fmt: skip


def _layout(handlers: PlayHandlers) -> Page:
    sampling, c = handlers.default_sampling, dict[str, Any]()
    session = gr.State(None, time_to_live=IDLE_S)
    with gr.Row():
        with gr.Column(scale=3):
            gr.HTML('<span id="ws-fps">0.0 FPS</span><span id="ws-paused"></span>')
            # The frame and its status line, shown together by play.js whether the frame came
            # down the frame channel (demo/frames.py) or in the hidden <img> of a Gradio update.
            gr.HTML(
                '<canvas id="ws-screen" class="ws-frame" width="64" height="64"></canvas>'
                '<p id="ws-status">pick a start frame</p>'
            )
            frame = gr.HTML("", elem_id="ws-frame", elem_classes=["ws-hidden"])
            sliders = _sliders(handlers)
            with gr.Row():
                for name in ("pause (P)", "undo", "restart", "download mp4", "download GIF"):
                    c[name] = gr.Button(name, size="sm")
            c["download"] = gr.File(label="session video", interactive=False, height=90)
        with gr.Column(scale=2):
            c["gallery"] = gr.Gallery(
                [(str(s.path), s.label) for s in handlers.starts], columns=6, height=180,
                label="start frames (held-out levels)", allow_preview=False, elem_id="ws-starts",
            )  # fmt: skip
            c["clips"] = gr.Dropdown(
                handlers.shard_clips, label="or a clip of the shards",
                visible=bool(handlers.shard_clips),
            )  # fmt: skip
            c["upload"] = gr.File(
                label=f"or upload an image or a short clip (up to {MAX_UPLOAD_MB} MB)",
                file_types=sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES),
            )
            with gr.Row():
                for action in handlers.preview_actions():
                    label = handlers.controls.controls[action].label
                    c[f"action {action}"] = gr.Button(label, size="sm", min_width=60)
            c["legend"] = gr.HTML(handlers.legend(None, Settings(sampling.steps, 1.0, 0)))
            c["preview"] = gr.Button("preview every action from this frame", size="sm")
            with gr.Accordion("sampling", open=False):
                steps = gr.Slider(1, 25, value=sampling.steps, step=1, label="MaskGIT steps")
                temperature = gr.Slider(
                    0.0, 3.0, value=sampling.temperature, step=0.1, label="temperature"
                )
                seed = gr.Number(0, precision=0, label="seed (used on start and restart)")
                # Shown only for a world trained for it (action_dropout > 0).
                guidance = gr.Slider(
                    0.0, 4.0, value=sampling.guidance, step=0.5, visible=handlers.guidable,
                    label="key guidance (1: off; higher: the keys act more strongly, each frame "
                    "costs about twice as much)",
                )  # fmt: skip
    c["hold"] = gr.Button("hold", elem_id="ws-hold", elem_classes=["ws-hidden"])
    c["keys"] = gr.Button("keys", elem_id="ws-keys", elem_classes=["ws-hidden"])
    c["held"] = gr.Textbox(elem_classes=["ws-hidden"])
    c["channel"] = gr.Textbox(elem_classes=["ws-hidden"])
    if sliders:
        c["drive"] = gr.Button("one frame with these controls", size="sm", elem_id="ws-drive")
    return Page(session, frame, steps, temperature, seed, guidance, c, sliders)


def _sliders(handlers: PlayHandlers) -> list[gr.Slider]:
    """One slider per control of a continuous world, showing its value as the keys ramp it."""
    space = handlers.engine.action_space
    if not space.continuous:
        return []
    names = space.names or [f"control {i}" for i in range(space.n)]
    rest = space.idle()
    assert isinstance(rest, list)  # a continuous space's rest is a value per control
    with gr.Row():
        return [
            gr.Slider(lo, hi, value=r, step=0.05, label=name, elem_id=f"ws-control-{name}")
            for name, lo, hi, r in zip(names, space.low, space.high, rest, strict=True)
        ]


def _wire_play(handlers: PlayHandlers, page: Page, channels: FrameChannels) -> None:
    c, knobs, shown = page.controls, page.knobs, page.shown

    def hold(
        held: str, channel: str, session: Any, n: Any, t: Any, s: Any, g: Any,
        request: gr.Request,
    ) -> Any:  # fmt: skip  # n, t, s, g: the knobs; Gradio passes gr.Request only to a named one
        stream = handlers.hold(held, session, Settings(n, t, s, g), _player(request))
        return channels.through(channel, stream)  # frames down the channel, the last to Gradio

    def keys(held: str, request: gr.Request) -> None:
        handlers.set_keys(held, _player(request))

    c["hold"].click(
        page.streams(hold), [c["held"], c["channel"], page.session, *knobs], shown, js=HOLD_JS,
        show_progress="hidden", trigger_mode="once", concurrency_id="players",
        concurrency_limit=MAX_PLAYERS,
    ).then(None, js="() => window.worldsimStreamDone()")  # fmt: skip
    # Outside the queue: a key change reaches a running stream at once, never behind steps.
    # always_last: keys released together send two changes at once, and the default ("once")
    # would drop the second while the first is in flight, leaving a released key held.
    c["keys"].click(
        keys, [c["held"]], None, js=HELD_JS, queue=False, show_progress="hidden",
        trigger_mode="always_last",
    )  # fmt: skip
    for action in handlers.preview_actions():
        c[f"action {action}"].click(
            page.shows(lambda s, *k, a=action: handlers.step(a, s, Settings(*k))),
            [page.session, *knobs], shown, show_progress="hidden", **ENGINE,
        )  # fmt: skip
    if page.sliders:  # a driven world: the sliders set its controls, a button steps once

        def set_controls(session: Any, *values: Any) -> Any:
            return handlers.set_controls(values, session)

        def drive(session: Any, *knobs: Any) -> Any:
            controls = list(session.controls) if session is not None else []
            return handlers.step(controls, session, Settings(*knobs))

        for slider in page.sliders:
            slider.release(page.shows(set_controls), [page.session, *page.sliders], shown)
        c["drive"].click(page.shows(drive), [page.session, *knobs], shown, **ENGINE)
    c["pause (P)"].click(None, js="() => window.worldsimTogglePause()")
    c["undo"].click(page.shows(handlers.undo), [page.session], shown, **ENGINE)
    c["restart"].click(
        page.shows(lambda s, *k: handlers.restart(s, Settings(*k))), [page.session, *knobs], shown,
        **ENGINE,
    )  # fmt: skip
    c["preview"].click(
        _friendly(lambda s, *k: handlers.legend(s, Settings(*k)), 1), [page.session, *knobs],
        c["legend"], **ENGINE,
    )  # fmt: skip
    for name, suffix in (("download mp4", ".mp4"), ("download GIF", ".gif")):

        def save(session: Any, request: gr.Request, suffix: str = suffix) -> str:
            return str(handlers.download(session, suffix, request.session_hash or "session"))

        c[name].click(
            _friendly(save, 1), [page.session], c["download"], concurrency_id="downloads",
            concurrency_limit=2,
        )  # fmt: skip


def _wire_starts(handlers: PlayHandlers, page: Page) -> None:
    c, knobs, shown = page.controls, page.knobs, page.shown

    def pick(
        session: Any, steps: Any, temperature: Any, seed: Any, guidance: Any,
        evt: gr.SelectData, request: gr.Request,
    ) -> Any:  # fmt: skip
        settings = Settings(steps, temperature, seed, guidance)
        return handlers.start_builtin(int(evt.index), settings, _player(request))

    def clip(name: str, session: Any, n: Any, t: Any, s: Any, g: Any, request: gr.Request) -> Any:
        return handlers.start_shard_clip(name, Settings(n, t, s, g), _player(request))

    def upload(
        path: str | None, session: Any, n: Any, t: Any, s: Any, g: Any, request: gr.Request
    ) -> Any:
        return handlers.start_upload(path, Settings(n, t, s, g), _player(request))

    picked = c["gallery"].select(page.shows(pick), [page.session, *knobs], shown, **ENGINE)
    chosen = c["clips"].input(page.shows(clip), [c["clips"], page.session, *knobs], shown, **ENGINE)
    uploaded = c["upload"].upload(
        page.shows(upload), [c["upload"], page.session, *knobs], shown, **ENGINE
    )
    for event in (picked, chosen, uploaded):
        _then_preview(handlers, page, event)


def _player(request: gr.Request) -> str:
    """The id the handlers know a player by: its browser session's."""
    return request.session_hash or "anonymous"


def _friendly(fn: Callable[..., Any], outputs: int) -> Callable[..., Any]:
    """Show a PlayError to its player as a notice and leave the page as it was; any other error
    is logged here with its traceback and shown as one short line."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PlayError as err:
            gr.Warning(str(err))
            return gr.skip() if outputs == 1 else tuple(gr.skip() for _ in range(outputs))
        except Exception as err:
            log.exception("play handler failed")
            raise gr.Error(f"the world could not do that ({type(err).__name__})") from None

    return run


def launch(
    world: Path,
    shard_clips: Sequence[str] = (),
    host: str = "127.0.0.1",
    port: int | None = None,
    device: str = "cpu",
    open_browser: bool = False,
    block: bool = True,
    threads: int | None = None,
) -> tuple[gr.Blocks, str]:
    """Load the world once and serve the app; returns the app and its local URL. `threads`:
    torch threads for the models; None leaves half the cores to a browser on this machine (on
    2 cores, one thread gave one player 28-31 FPS on the page against 19 with two, whose
    threads wait on each other while the browser holds a core)."""
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 2) // 2))
    engine = WorldSimulator.from_pretrained(world, EngineConfig(device=device))
    handlers, channels = PlayHandlers(engine, world, shard_clips), FrameChannels()
    atexit.register(handlers.close)  # the session videos' temporary folder
    app = build_app(handlers, channels)
    app.queue(default_concurrency_limit=1, max_size=MAX_QUEUE)
    # Gradio's queue looks for work every millisecond while it has none: the idle server used
    # 8% of a core so on the 2-core reference machine, where the engine and the browser need
    # every bit; every 5 ms, 3%. A queued event (a start, a stream's first key) waits up to
    # QUEUE_POLL_S for it; key changes (outside the queue) and the frame channel never do.
    app._queue.sleep_when_free = QUEUE_POLL_S
    _, url, _ = app.launch(
        server_name=host, server_port=port, inbrowser=open_browser, prevent_thread_lock=True,
        max_file_size=f"{MAX_UPLOAD_MB}mb", css=(STATIC / "play.css").read_text(),
        js=(STATIC / "play.js").read_text(), footer_links=[], quiet=True,
    )  # fmt: skip
    app.app.add_api_route("/worldsim/status", lambda: {"players": len(handlers.players)})
    app.app.add_api_websocket_route(FRAMES_ROUTE, channels.serve)
    # quiet: Gradio's own banner tells a command-line user to edit launch(share=True)
    print(f"worldsim play: serving {world.name} on {url} (Ctrl+C stops)", flush=True)
    if block:
        app.block_thread()
    return app, url
