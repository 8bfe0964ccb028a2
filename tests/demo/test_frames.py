"""The frame channel (demo/frames.py) without a browser: a page's websocket receives a held
key's frames as raw pixels with their header, Gradio is passed only what the channel could not
carry and the stream's last frame, a closed page's channel is gone, and bad ids are refused."""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import time

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from demo.frames import ROUTE, FrameChannels
from demo.view import View

CHANNEL = "0123456789abcdef" * 2


def client_for(channels: FrameChannels) -> TestClient:
    return TestClient(Starlette(routes=[WebSocketRoute(ROUTE, channels.serve)]))


def view(index: int, controls: list[float] | None = None) -> View:
    frame_HWC = np.random.default_rng(index).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    return View(frame_HWC, index, 12.5, f"frame {index} · RIGHT", controls)


def decoded(message: bytes) -> tuple[dict, np.ndarray]:
    (length,) = struct.unpack("<I", message[:4])
    header = json.loads(message[4 : 4 + length])
    pixels = np.frombuffer(message[4 + length :], np.uint8)
    return header, pixels.reshape(header["height"], header["width"], 4)


def wait_until(condition, seconds: float = 5.0) -> None:
    ended = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < ended, "timed out"
        time.sleep(0.01)


def test_a_stream_goes_down_the_open_channel_and_only_its_last_frame_to_gradio() -> None:
    channels = FrameChannels()
    stream = [("session", view(i, [0.1 * i, 1.0])) for i in range(3)]
    with client_for(channels) as client:
        with client.websocket_connect(f"{ROUTE}?channel={CHANNEL}") as page:
            wait_until(lambda: len(channels) == 1)
            passed = list(channels.through(CHANNEL, iter(stream)))
            received = [decoded(page.receive_bytes()) for _ in stream]
        wait_until(lambda: len(channels) == 0)  # the page closed: its channel is gone
    assert passed == stream[-1:]  # Gradio's components end holding the stream's last frame
    for (header, rgba_HWC), (_, sent) in zip(received, stream, strict=True):
        assert header == {
            "frame": sent.index, "height": 4, "width": 6, "status": sent.status, "ms": 12.5,
            "controls": sent.controls,
        }  # fmt: skip
        assert np.array_equal(rgba_HWC[..., :3], sent.frame_HWC) and (rgba_HWC[..., 3] == 255).all()
    # No channel open (or none named): every frame goes through Gradio, as before.
    assert list(channels.through(CHANNEL, iter(stream))) == stream
    assert list(channels.through("", iter(stream))) == stream


@pytest.mark.parametrize("bad", ["", "abc", CHANNEL.upper(), CHANNEL + "0", "../" + CHANNEL[3:]])
def test_a_channel_id_that_is_not_128_random_bits_in_hex_is_refused(bad: str) -> None:
    channels = FrameChannels()
    with (
        client_for(channels) as client,
        pytest.raises(WebSocketDisconnect) as refused,
        client.websocket_connect(f"{ROUTE}?channel={bad}") as page,
    ):
        page.receive_bytes()
    assert refused.value.code == 1008 and len(channels) == 0


def test_gradio_s_copy_of_the_frame_carries_its_status_line_escaped() -> None:
    shown = View(np.zeros((2, 2, 3), np.uint8), 7, None, 'from upload <b>"x".png</b>')
    html = shown.frame_html
    assert 'data-frame="7"' in html and "data-ms" not in html  # not stepped: no engine time
    assert 'data-status="from upload &lt;b&gt;&quot;x&quot;.png&lt;/b&gt;"' in html
    assert 'src="data:image/png;base64,' in html


def test_a_channel_that_fails_to_send_is_dropped_and_closed_so_the_page_reopens_it() -> None:
    class Broken:  # a socket whose page went away mid-send
        closed_with: int | None = None

        async def send_bytes(self, message: bytes) -> None:
            raise RuntimeError("the socket is closed")

        async def close(self, code: int) -> None:
            self.closed_with = code

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    channels, broken = FrameChannels(), Broken()
    channels._open[CHANNEL] = (broken, loop)  # type: ignore[assignment]  # as `serve` holds it
    stream = [("session", view(i)) for i in range(2)]
    assert list(channels.through(CHANNEL, iter(stream))) == stream  # Gradio shows them all
    assert len(channels) == 0
    wait_until(lambda: broken.closed_with == 1011)
    loop.call_soon_threadsafe(loop.stop)
