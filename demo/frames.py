"""The frame channel: a websocket each play page opens, over which a held-key stream's frames
reach it as raw pixels drawn on a canvas (demo/static/play.js), instead of as component updates
through Gradio's queue.

Why: per frame shown at 40 FPS, a Gradio HTML update (a PNG data URI in an <img>) cost chromium
10.6 ms of CPU and the server 4.3 ms; raw RGBA over a websocket drawn with putImageData cost
chromium about 5 ms and the server about 1.3 (one page in Debian's chromium, on the 2-core
reference machine). The engine shares those cores, so the browser's share is frames lost.

The page makes a random channel id, opens `/worldsim/frames?channel=ID` and sends the id with
its held-key stream (demo/app.py); each frame of that stream goes down the channel if it is
open, else through Gradio as before, and the stream's last frame goes through Gradio too, so
the page's components end holding what the stream left. Messages are binary: a little-endian
uint32 length, that many bytes of JSON (the frame's index, size, status
line, engine time and a driven world's controls), then the frame as RGBA rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import struct
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from demo.view import View

Shown = TypeVar("Shown", bound=tuple[Any, View])  # a handler's (session, view)

ROUTE = "/worldsim/frames"
CHANNEL_ID = re.compile(r"[0-9a-f]{32}")  # 128 random bits, hex: not guessable by other pages
SEND_TIMEOUT_S = 2.0  # a frame not on its way by then: the channel counts as closed
MAX_CHANNELS = 256  # open channels at most (a page holds one); more are refused


def frame_message(view: View) -> bytes:
    """A view's frame as the channel sends it: header length, JSON header (what play.js shows
    beside the pixels), RGBA rows."""
    height, width, _ = view.frame_HWC.shape
    header = {
        "frame": view.index, "height": height, "width": width, "status": view.status,
        "ms": view.engine_ms, "controls": view.controls,
    }  # fmt: skip
    alpha_HW1 = np.full((height, width, 1), 255, np.uint8)
    rgba_HWC = np.concatenate([view.frame_HWC, alpha_HW1], axis=-1)  # uint8, one copy
    encoded = json.dumps(header).encode()
    return struct.pack("<I", len(encoded)) + encoded + rgba_HWC.tobytes()


class FrameChannels:
    """The open channels by id. `serve` runs on the server's event loop, one per page;
    `send` is called from the stream's worker thread."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[WebSocket, asyncio.AbstractEventLoop]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._open)

    async def serve(self, websocket: WebSocket) -> None:
        """Hold a page's channel open until the page closes it."""
        channel = websocket.query_params.get("channel", "")
        if not CHANNEL_ID.fullmatch(channel) or len(self._open) >= MAX_CHANNELS:
            await websocket.close(code=1008)  # policy violation: a bad id, or too many
            return
        await websocket.accept()
        entry = (websocket, asyncio.get_running_loop())
        with self._lock:
            self._open[channel] = entry
        try:  # the page sends nothing: receiving is how its close is heard
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass
        except (WebSocketDisconnect, RuntimeError):
            pass  # gone without a close message
        finally:
            with self._lock:
                if self._open.get(channel) is entry:
                    del self._open[channel]

    def send(self, channel: str | None, message: bytes) -> bool:
        """Send a frame down `channel` and wait until it is on its way. False (the caller shows
        the frame through Gradio instead) if no such channel is open or sending fails."""
        entry = self._open.get(channel or "")
        if entry is None:
            return False
        websocket, loop = entry
        try:
            asyncio.run_coroutine_threadsafe(websocket.send_bytes(message), loop).result(
                timeout=SEND_TIMEOUT_S
            )
        except Exception:  # closed mid-send, loop gone, timed out: that page gets Gradio's way
            with self._lock:
                if self._open.get(channel or "") is entry:
                    del self._open[channel or ""]
            with contextlib.suppress(RuntimeError):  # the loop is gone: so is the socket
                # closed here too, the page opens a new channel (play.js) for its next stream
                asyncio.run_coroutine_threadsafe(websocket.close(code=1011), loop)
            return False
        return True

    def through(self, channel: str | None, stream: Iterator[Shown]) -> Iterator[Shown]:
        """Send a stream's (session, view) frames down `channel`, passing on what Gradio must
        still show: every frame the channel could not carry, and the stream's last."""
        last = None
        for shown in stream:
            if self.send(channel, frame_message(shown[1])):
                last = shown
            else:
                last = None
                yield shown
        if last is not None:
            yield last
