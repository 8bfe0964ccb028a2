"""`worldsim play` in a real browser: Debian's chromium driven by Playwright starts the shipped
world, holds keys, and sees the level scroll under RIGHT, the frame change and the FPS readout
appear. Marked `browser` (CI runs it after `apt-get install chromium`); a missing chromium fails
it rather than skipping.
The screenshot goes to $WORLDSIM_SCREENSHOT (default: the test's tmp folder)."""

from __future__ import annotations

import base64
import io
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(*world: str):
    """`worldsim play` on a free port (with `--world` given): yields its URL and start time."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    began = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "commands", "play", "--port", str(port), *world],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                pytest.fail(f"worldsim play exited: {proc.stdout.read()}")
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        yield url, began
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def server():
    yield from serve()


@pytest.fixture
def car_server():
    yield from serve("--world", "carracing")


def open_play(pw, url: str):
    """Chromium showing the play page's first frame: (browser, page)."""
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.wait_for_selector("#ws-screen[data-frame]", timeout=60_000)
    return browser, page


def screen(page) -> str:
    """The frame the page shows (its canvas) as a PNG data URI."""
    return page.evaluate("document.querySelector('#ws-screen').toDataURL()")


def by_channel(page) -> int:
    """How many frames reached the page down its frame channel (demo/frames.py)."""
    return int(page.get_attribute("#ws-screen", "data-channel-frames") or 0)


def scene_shift(before_src: str, after_src: str) -> tuple[int, int]:
    """(dx, dy) by which the scene moved between two frames shown as PNG data URIs."""
    import numpy as np
    import torch
    from PIL import Image

    from simulator.evaluation.keys import view_shift

    def frame(src: str) -> torch.Tensor:
        png = base64.b64decode(src.split(",", 1)[1])
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)
        return torch.from_numpy(pixels).permute(2, 0, 1)[None] / 127.5 - 1

    dx, dy = view_shift(frame(before_src), frame(after_src))[0].tolist()
    return dx, dy


def test_holding_keys_plays_the_shipped_world(server, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    url, began = server
    assert Path(CHROMIUM).exists(), "browser tests need Debian's chromium: apt-get install chromium"
    with sync_playwright() as pw:
        browser, page = open_play(pw, url)
        print(f"command to first frame: {time.perf_counter() - began:.1f} s")
        first = screen(page)
        assert page.get_attribute("#ws-screen", "data-frame") == "0"
        # Level 100035 (the third start): RIGHT scrolls its level, as in 4 of the 10 all-theme
        # starts (tests/simulator/world/test_shipped_world.py); in the first it turns the player.
        page.locator("#ws-starts .thumbnail-item").nth(2).click()
        page.wait_for_function(
            "document.querySelector('#ws-status').innerText.includes('100035')", timeout=60_000
        )
        first = screen(page)
        page.click("h1, .prose, body", position={"x": 5, "y": 5})  # focus the page, not a field
        pressed = time.perf_counter()
        page.keyboard.down("ArrowRight")
        page.wait_for_function("document.querySelector('#ws-screen').dataset.frame >= 1")
        print(f"first frame {1000 * (time.perf_counter() - pressed):.0f} ms after the first key")
        page.wait_for_function(
            "document.querySelector('#ws-screen').dataset.frame >= 8", timeout=60_000
        )
        walked = screen(page)
        dx, dy = scene_shift(first, walked)
        print(f"held RIGHT to frame {page.get_attribute('#ws-screen', 'data-frame')}: "
              f"the scene moved {dx:+d}, {dy:+d} px")  # fmt: skip
        assert dx < 0, "holding RIGHT should scroll the level left: the view follows the player"
        page.keyboard.down("ArrowUp")  # RIGHT+UP while both are held
        page.wait_for_timeout(1500)
        page.keyboard.up("ArrowUp")
        page.keyboard.up("ArrowRight")
        page.wait_for_timeout(500)
        frames = int(page.get_attribute("#ws-screen", "data-frame"))
        fps = page.inner_text("#ws-fps")
        status = page.inner_text("#ws-status")
        print(f"browser: {frames} frames, readout {fps!r}, status {status!r}")
        assert frames >= 8 and screen(page) != first
        assert by_channel(page) >= 8, "held-key frames should come down the frame channel"
        assert re.fullmatch(r"\d+\.\d FPS · engine \d+ ms/frame", fps), fps
        assert float(fps.split()[0]) > 0
        assert "RIGHT" in status
        shot = Path(os.environ.get("WORLDSIM_SCREENSHOT", tmp_path / "play.png"))
        page.screenshot(path=str(shot))
        print(f"screenshot: {shot}")
        # Previews come on request, of the frame shown, and are marked stale once it moves on.
        page.click("text=preview every action from this frame")
        page.wait_for_function("document.querySelectorAll('.ws-legend .ws-thumb').length >= 6")
        page.click("h1, .prose, body", position={"x": 5, "y": 5})
        page.keyboard.down("ArrowRight")
        page.wait_for_selector(".ws-legend.ws-stale", timeout=30_000)
        page.keyboard.up("ArrowRight")
        page.keyboard.press("p")  # pause: held keys no longer step the world
        assert page.inner_text("#ws-paused") == "paused"
        page.wait_for_timeout(500)  # a step already in flight when paused may still land
        paused_at = int(page.get_attribute("#ws-screen", "data-frame"))
        page.keyboard.down("ArrowLeft")
        page.wait_for_timeout(800)
        page.keyboard.up("ArrowLeft")
        assert int(page.get_attribute("#ws-screen", "data-frame")) == paused_at
        browser.close()
    with pytest.raises(urllib.error.HTTPError):  # the server serves only its own files
        urllib.request.urlopen(f"{url}/gradio_api/file=/etc/passwd", timeout=5)


def test_two_players_play_apart_and_a_closed_page_frees_its_world(server) -> None:
    """Two browser sessions hold different keys at once: each sees its own action and frames,
    both stream, and closing one page frees its world on the server (`/worldsim/status`)."""
    import json

    from playwright.sync_api import sync_playwright

    url, _ = server

    def players() -> int:
        return json.loads(urllib.request.urlopen(f"{url}/worldsim/status", timeout=5).read())[
            "players"
        ]

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        pages = [browser.new_context().new_page() for _ in range(2)]
        for page in pages:
            page.goto(url)
            page.wait_for_selector("#ws-screen[data-frame]", timeout=60_000)
            page.click("h1, .prose, body", position={"x": 5, "y": 5})
        assert players() == 2
        for page, key in zip(pages, ["ArrowRight", "ArrowLeft"], strict=True):
            page.keyboard.down(key)
        for page in pages:
            page.wait_for_function(
                "document.querySelector('#ws-screen').dataset.frame >= 10", timeout=60_000
            )
        statuses = [page.inner_text("#ws-status") for page in pages]
        print(f"two players: {statuses}")
        assert " · RIGHT · " in statuses[0] and " · LEFT · " in statuses[1]
        assert all(by_channel(page) >= 10 for page in pages)
        pages[1].close()  # mid-stream
        for _ in range(40):
            if players() == 1:
                break
            time.sleep(0.25)
        assert players() == 1, "a closed page's world should be freed"
        frame = int(pages[0].get_attribute("#ws-screen", "data-frame"))
        pages[0].wait_for_function(
            f"document.querySelector('#ws-screen').dataset.frame > {frame}", timeout=30_000
        )  # the other player plays on
        pages[0].keyboard.up("ArrowRight")
        browser.close()


def test_the_car_answers_the_wheel_and_the_pedals(car_server) -> None:
    """The driving world: held arrows ramp the sliders (steer, gas) and ease them back when let
    go, and the same start driven left and driven right ends in different views."""
    from playwright.sync_api import sync_playwright

    url, _ = car_server

    def value(page, name: str) -> float:
        return float(page.input_value(f"#ws-control-{name} input[type=number]"))

    def drive(page, keys: list[str], frames: int) -> str:
        page.click("text=restart")  # the same start and seed each time
        page.wait_for_function("document.querySelector('#ws-screen').dataset.frame == 0")
        page.click("h1, .prose, body", position={"x": 5, "y": 5})
        for key in keys:
            page.keyboard.down(key)
        page.wait_for_function(
            f"document.querySelector('#ws-screen').dataset.frame >= {frames}", timeout=60_000
        )
        steer, gas = value(page, "steer"), value(page, "gas")
        src = screen(page)
        for key in keys:  # released together: both must ease back, and the stream end
            page.keyboard.up(key)
        print(f"{keys}: steer {steer:+.2f}, gas {gas:.2f}")
        assert abs(steer) == 1.0 and gas == 1.0
        page.wait_for_function(
            "['steer', 'gas'].every(n => Number(document.querySelector("
            "`#ws-control-${n} input[type=number]`).value) == 0)",
            timeout=30_000,
        )
        page.wait_for_timeout(500)
        stopped = page.get_attribute("#ws-screen", "data-frame")
        page.wait_for_timeout(700)
        assert page.get_attribute("#ws-screen", "data-frame") == stopped, "still streaming"
        return src

    with sync_playwright() as pw:
        browser, page = open_play(pw, url)
        assert "steer" in page.inner_text("body") and value(page, "steer") == 0.0
        left = drive(page, ["ArrowLeft", "ArrowUp"], 12)
        right = drive(page, ["ArrowRight", "ArrowUp"], 12)
        import numpy as np

        def pixels(src: str) -> np.ndarray:
            from PIL import Image

            png = base64.b64decode(src.split(",", 1)[1])
            return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)

        apart = float(np.abs(pixels(left) - pixels(right)).mean())
        print(f"driven left vs right from the same start: {apart:.1f} levels apart on average")
        assert apart > 2.0, "steering left and right should lead to different views"
        browser.close()
