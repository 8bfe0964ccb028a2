"""`worldsim play` speed as a player sees it, measured in one run in Debian's chromium.

1. Time from the command to the first frame on the page (server start, world load, page load).
2. The first frame after a player's first key press on a freshly loaded page, against the
   engine's own step time.
3. One player holding RIGHT: frames per second the page shows (frames / seconds held, and the
   page's own FPS readout), against the engine stepping the same world in this process with no
   browser or server (before the server starts and again after it stops, averaged): the ratio
   is what the app costs on top of the engine. Also chromium's and the server's CPU per frame.
4. 2, 4 and 8 players holding keys at once (one browser context each: separate Gradio
   sessions): frames per second per player and in total, and the total as a multiple of one
   player's.

    python benchmarks/bench_play.py [--seconds 10] [--world WORLD]
    python benchmarks/bench_play.py --engine-against OTHER_WORLD [--world WORLD] [--runs 10]
    python benchmarks/bench_play.py --load-minutes 5 [--world WORLD]

The second form skips the browser and compares two worlds' engine speed, run by run. The
third is a load test: 8 players holding keys for minutes, with the server's memory, every
player's progress and error notices every 30 s.

The first form needs `apt-get install chromium` and the dev extra (Playwright). The server runs
with torch's default threads (2 on the reference machine).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
KEYS = ["ArrowRight", "ArrowLeft", "ArrowUp", "KeyD"]  # what the players hold, in turn
PLAYERS = (2, 4, 8)  # the crowds measured after one player


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="how long keys are held")
    parser.add_argument("--world", default=None, help="world folder (default: the shipped one)")
    parser.add_argument(
        "--engine-against",
        metavar="WORLD",
        default=None,
        help="no browser: step --world and WORLD alone, alternating, and print their FPS ratio",
    )
    parser.add_argument("--runs", type=int, default=10, help="runs of 80 steps per world")
    parser.add_argument(
        "--load-minutes",
        type=float,
        default=0.0,
        help="instead: 8 players hold keys this long; the server's memory, frames per player "
        "and page errors every 30 s, and the temporary files left",
    )
    args = parser.parse_args()
    if args.engine_against:
        compare_engines(args.world, args.engine_against, args.runs)
        return
    # The engine alone, before the server starts and after it stops (nothing else running
    # either time), averaged: this machine's speed drifts by a third within minutes, and one
    # measurement made the ratio swing with it.
    engine_before = 0.0 if args.load_minutes else engine_only_fps(args.world, steps=80)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "commands", "play", "--port", str(port)]
    cmd += ["--world", args.world] if args.world else []
    began = time.perf_counter()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = wait_for(f"http://127.0.0.1:{port}")
        if args.load_minutes:
            run_load(url, server.pid, args.load_minutes)
            return
        figures = run_browser(url, began, args.seconds, server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    figures.report(engine_before, engine_only_fps(args.world, steps=80))


def engine_only_fps(world: str | None, steps: int) -> float:
    import torch

    from simulator.engine.world_simulator import WorldSimulator
    from worldsim.worlds import shipped_world

    sim = WorldSimulator.from_pretrained(Path(world) if world else shipped_world())
    space = sim.action_space  # held: RIGHT in a game, the idle controls of a driving world
    right = space.names.index("RIGHT") if "RIGHT" in space.names else space.idle() or 0
    state = sim.reset(torch.zeros(1, 3, 64, 64))
    for _ in range(4):  # warm-up
        _, state = sim.step(state, right)
    began = time.perf_counter()
    for _ in range(steps):
        _, state = sim.step(state, right)
    return steps / (time.perf_counter() - began)


def compare_engines(world: str | None, other: str, runs: int) -> None:
    """The engine alone, two worlds alternating run by run so that the machine's changing load
    falls on both alike: each run's FPS, the medians and their ratio."""
    worlds = {world or "shipped": world, other: other}  # label -> folder (None: shipped)
    fps: dict[str, list[float]] = {name: [] for name in worlds}
    for _ in range(runs):
        for name, folder in worlds.items():
            fps[name].append(engine_only_fps(folder, steps=80))
    for name, values in fps.items():
        shown = " ".join(f"{v:.1f}" for v in values)
        print(f"{name}: median {statistics.median(values):.1f} FPS over {runs} runs ({shown})")
    first, second = (statistics.median(v) for v in fps.values())
    print(f"ratio {first / second:.2f} ({world or 'shipped'} / {other})")


def wait_for(url: str) -> str:
    for _ in range(600):
        try:
            urllib.request.urlopen(url, timeout=1)
            return url
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in 2 minutes")


@dataclass
class BrowserFigures:
    first_frame_s: float  # command to the first frame on the page
    first_key_ms: float  # first key press to its frame
    one: float  # FPS one player's page showed
    readout: str  # the page's own readout at the end of that hold
    generate_ms: float  # the server's median time to generate a frame meanwhile
    chromium_ms: float  # chromium's CPU per frame shown meanwhile
    server_ms: float  # the server's CPU per frame shown meanwhile
    crowds: dict[int, list[float]]  # players -> FPS each page showed

    def report(self, engine_before: float, engine_after: float) -> None:
        engine = (engine_before + engine_after) / 2
        print(f"command to first frame: {self.first_frame_s:.1f} s")
        print(f"first frame after the first key: {self.first_key_ms:.0f} ms "
              f"(the engine's own step: {1000 / engine:.0f} ms)")  # fmt: skip
        print(f"engine alone (this process, nothing else running): {engine:.1f} FPS (mean of "
              f"{engine_before:.1f} before the server started, {engine_after:.1f} after it "
              "stopped)")  # fmt: skip
        print(f"one player in the browser: {self.one:.1f} FPS (page readout {self.readout}); "
              f"ratio to the engine {self.one / engine:.2f}")  # fmt: skip
        print(f"  the server's median time to generate a frame meanwhile: "
              f"{self.generate_ms:.0f} ms (engine alone: {1000 / engine:.0f} ms)")  # fmt: skip
        print(f"  CPU per frame shown: chromium {self.chromium_ms:.1f} ms, the server "
              f"{self.server_ms:.1f} ms (engine included)")  # fmt: skip
        for n, fps in self.crowds.items():
            print(f"{n} players at once: {sum(fps):.1f} FPS in total ({sum(fps) / self.one:.1f}x "
                  f"one player), per player {min(fps):.1f}-{max(fps):.1f}")  # fmt: skip


def run_browser(url: str, began: float, seconds: float, server_pid: int) -> BrowserFigures:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        pages = [open_page(browser, url)]
        first_frame_s = time.perf_counter() - began
        first_key_ms = first_key(pages[0])
        used = cpu_seconds(server_pid)
        (one,), generate_ms = hold(pages[:1], KEYS[:1], seconds)
        chromium_ms, server_ms = (
            1000 * (b - a) / (one * seconds)
            for a, b in zip(used, cpu_seconds(server_pid), strict=True)
        )
        readout = pages[0].inner_text("#ws-fps")
        crowds = {}
        for n in PLAYERS:  # only the players' own pages are open: an idle Gradio page costs
            # chromium about 4% of a core, so 8 open pages took a third of a core from 2 players
            pages += [open_page(browser, url) for _ in range(n - len(pages))]
            time.sleep(2)  # the new pages' own start-up (their legends) settles first
            crowds[n] = hold(pages, [KEYS[i % len(KEYS)] for i in range(n)], seconds)[0]
        browser.close()
    return BrowserFigures(
        first_frame_s, first_key_ms, one, readout, generate_ms, chromium_ms, server_ms, crowds
    )


def cpu_seconds(server_pid: int) -> tuple[float, float]:
    """CPU seconds used so far by chromium's processes, and by the server."""
    import psutil

    chromium = 0.0
    for proc in psutil.process_iter(["name"]):
        try:
            if "chrom" in (proc.info["name"] or ""):
                chromium += sum(proc.cpu_times()[:2])
        except psutil.Error:
            continue  # ended meanwhile
    return chromium, sum(psutil.Process(server_pid).cpu_times()[:2])


def open_page(browser: Any, url: str) -> Any:
    """A new player (its own browser context: its own Gradio session) showing its first frame."""
    page = browser.new_context().new_page()
    page.goto(url)
    page.wait_for_selector("#ws-screen[data-frame]", timeout=120_000)
    return page


def first_key(page: Any) -> float:
    """Milliseconds from pressing RIGHT on a page showing frame 0 to frame 1 on it."""
    page.click("body", position={"x": 5, "y": 5})  # focus the page, not a field
    pressed = time.perf_counter()
    page.keyboard.down("ArrowRight")
    page.wait_for_function("document.querySelector('#ws-screen').dataset.frame >= 1")
    waited = time.perf_counter() - pressed
    page.keyboard.up("ArrowRight")
    return 1000 * waited


def run_load(url: str, server_pid: int, minutes: float, players: int = 8) -> None:
    """`players` sessions hold keys for `minutes`; every 30 s: the server's resident memory,
    each player's frames so far and the error notices on the pages. Then the temporary files
    the server left (Gradio's cache and the session videos' folder)."""
    import psutil
    from playwright.sync_api import sync_playwright

    server = psutil.Process(server_pid)
    temp = Path(os.environ.get("GRADIO_TEMP_DIR", "/tmp/gradio"))
    files_before = sum(1 for p in temp.rglob("*") if p.is_file()) if temp.exists() else 0
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        pages = [open_page(browser, url) for _ in range(players)]
        rss_start = server.memory_info().rss / 2**20
        for i, page in enumerate(pages):
            page.keyboard.down(KEYS[i % len(KEYS)])
        frame = "el => Number(el.dataset.frame)"
        ended, rss_max = time.perf_counter() + 60 * minutes, rss_start
        while time.perf_counter() < ended:
            time.sleep(30)
            rss = server.memory_info().rss / 2**20
            rss_max = max(rss_max, rss)
            frames = [p.eval_on_selector("#ws-screen", frame) for p in pages]
            errors = sum(p.locator(".toast-body.error").count() for p in pages)
            print(f"server {rss:.0f} MB; frames per player {min(frames)}-{max(frames)}; "
                  f"error notices {errors}", flush=True)  # fmt: skip
        browser.close()
    files_after = sum(1 for p in temp.rglob("*") if p.is_file()) if temp.exists() else 0
    print(f"{players} players for {minutes:g} min: server memory {rss_start:.0f} MB at the "
          f"start, {rss_max:.0f} MB at most; files in {temp}: {files_before} before, "
          f"{files_after} after")  # fmt: skip


def hold(pages: list, keys: list[str], seconds: float) -> tuple[list[float], float]:
    """Hold one key per page for `seconds` (all at once): the frames per second each page
    showed, and the median generation time the first page's status reported meanwhile."""
    frame = "el => Number(el.dataset.frame)"
    start = [p.eval_on_selector("#ws-screen", frame) for p in pages]
    for page, key in zip(pages, keys, strict=True):
        page.keyboard.down(key)
    samples = []
    for _ in range(int(seconds * 4)):
        time.sleep(0.25)
        found = re.search(r"(\d+) ms to generate", pages[0].inner_text("#ws-status"))
        samples += [float(found.group(1))] if found else []
    for page, key in zip(pages, keys, strict=True):
        page.keyboard.up(key)
    time.sleep(1)
    end = [p.eval_on_selector("#ws-screen", frame) for p in pages]
    fps = [(e - s) / seconds for s, e in zip(start, end, strict=True)]
    return fps, statistics.median(samples) if samples else float("nan")


if __name__ == "__main__":
    main()
