"""Interactive engine speed, as ratios measured in one run on this machine.

1. Frames per second of one 64x64 world, end to end (MaskGIT tokens -> decoded RGB frame), with
   and without the KV cache at a 16-frame context (issue targets: cached >= 5x uncached, and
   >= 10 FPS on the 2-core CPU) and with classifier-free guidance, then a sustained rollout with
   the real window (max_frames 16, hop 8), window jumps included.
2. Time per step against context length (4, 8, 16, 32 frames), cached and uncached, plotted to a
   PNG with PIL (the cached step must grow far less than linearly).
3. The attention backends' bf16 agreement check, and on a CUDA device: FPS and peak memory at
   batch 1 and 64 for the `base` and `large` presets, each available backend (SDPA's flash
   kernels, xformers, flash-attn) against the reference attention.

Models are the random-init `coinrun` presets (speed does not depend on the weights). Context c
means c frames before the new one, so the sweep builds both models with max_frames 33: only the
learned position tables grow, a step's cost depends on the context alone. Timings are medians
after a warm-up; each step of a sweep point starts from a freshly reset state (reset untimed).
`--threads` defaults to 1: a step's matmuls have a few hundred rows, a second thread gains little,
and OpenMP threads stall badly when another process holds a core.

    python benchmarks/bench_engine.py [--repeats 5] [--steps 4] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from simulator.engine.sampling import SamplingConfig
from simulator.engine.state import EngineConfig, WorldState
from simulator.engine.world_simulator import WorldSimulator
from simulator.models.dynamics import DynamicsModel
from simulator.models.dynamics_config import dynamics_preset
from tokenizer.config import tokenizer_preset
from tokenizer.model import VideoTokenizer
from worldsim.nn.attention import available_backends, check_backends_agree

SPEEDUP_TARGET, FPS_TARGET = 5.0, 10.0
GUIDANCE = 2.0  # a classifier-free guidance scale, timed against unguided sampling
CONTEXTS = (4, 8, 16, 32)


def build(
    preset: str, max_frames: int | None, device: str = "cpu"
) -> tuple[VideoTokenizer, DynamicsModel]:
    torch.manual_seed(0)
    extra = {} if max_frames is None else {"max_frames": max_frames}
    tokenizer = VideoTokenizer(tokenizer_preset(preset, **extra))
    # action_dropout only changes training; it lets the benchmark time guided sampling too.
    dynamics = DynamicsModel(
        dynamics_preset(preset, num_codes=tokenizer.num_codes, action_dropout=0.1, **extra)
    )
    return tokenizer.to(device), dynamics.to(device)


def engine(
    models: tuple[VideoTokenizer, DynamicsModel], steps: int, guidance: float = 1.0, **cfg: object
) -> WorldSimulator:
    sampling = SamplingConfig(steps=steps, guidance=guidance)
    return WorldSimulator(*models, cfg=EngineConfig(sampling=sampling, **cfg))  # type: ignore[arg-type]


def context_state(sim: WorldSimulator, context: int, batch: int = 1) -> WorldState:
    """A state whose window holds `context` frames (random pixels, action 0 between them)."""
    size = sim.tokenizer.cfg.image_size
    gen = torch.Generator().manual_seed(context)
    frames = torch.rand(batch, context, 3, size, size, generator=gen) * 2 - 1
    return sim.reset(frames, prompt_actions=torch.zeros(batch, context - 1, dtype=torch.long))


def median_step(sim: WorldSimulator, context: int, repeats: int, batch: int = 1) -> float:
    """Median seconds of one step from a fresh state with `context` frames (1 warm-up)."""
    times = []
    for i in range(repeats + 1):
        state = context_state(sim, context, batch)
        _sync(sim.device)
        t0 = time.perf_counter()
        sim.step(state, 1)
        _sync(sim.device)
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_cache_speedup(steps: int, repeats: int) -> None:
    models = build("coinrun", max_frames=max(CONTEXTS) + 1)
    print(
        f"[fps] one 64x64 world, coinrun presets (random init), {steps} MaskGIT steps, context 16"
    )
    seconds = {}
    for name, cached in (("cached", True), ("uncached", False)):
        seconds[name] = median_step(engine(models, steps, kv_cache=cached), 16, repeats)
        print(f"  {name:<8}: {1 / seconds[name]:7.2f} FPS ({seconds[name] * 1e3:7.1f} ms/step)")
    ratio = seconds["uncached"] / seconds["cached"]
    fps = 1 / seconds["cached"]
    verdict = _verdict(ratio >= SPEEDUP_TARGET)
    print(f"  cached / uncached speed: {ratio:.1f}x (target >= {SPEEDUP_TARGET:g}x: {verdict})")
    print(f"  cached FPS {fps:.1f} (target >= {FPS_TARGET:g}: {_verdict(fps >= FPS_TARGET)})")
    guided = median_step(engine(models, steps, guidance=GUIDANCE), 16, repeats)
    print(
        f"  cached, guidance {GUIDANCE:g} (two forward passes a MaskGIT step): {1 / guided:.2f} "
        f"FPS, {guided / seconds['cached']:.2f}x the time of an unguided step"
    )


def bench_sustained(steps: int, frames: int) -> None:
    models = build("coinrun", max_frames=None)
    print(f"[sustained] {frames} steps from one frame, coinrun window (max_frames 16, hop 8)")
    for dtype in ("float32", "bfloat16"):
        sim = engine(models, steps, dtype=dtype)
        state = context_state(sim, 1)
        for _ in range(2):  # warm-up
            _, state = sim.step(state, 1)
        t0 = time.perf_counter()
        for i in range(frames):
            _, state = sim.step(state, i % sim.action_space.n)
        elapsed = time.perf_counter() - t0
        print(f"  {dtype:<9}: {frames / elapsed:7.2f} FPS ({elapsed / frames * 1e3:7.1f} ms/step)")


def bench_context(steps: int, repeats: int, plot: Path) -> None:
    models = build("coinrun", max_frames=max(CONTEXTS) + 1)
    print(f"[context] ms per step against context length, {steps} MaskGIT steps")
    curves: dict[str, list[float]] = {}
    for name, cached in (("cached", True), ("uncached", False)):
        sim = engine(models, steps, kv_cache=cached)
        curves[name] = [median_step(sim, c, repeats) * 1e3 for c in CONTEXTS]
        row = " ".join(f"{c:>3}: {ms:8.1f}" for c, ms in zip(CONTEXTS, curves[name], strict=True))
        growth = curves[name][-1] / curves[name][0]
        print(f"  {name:<8} {row}   x{growth:.2f} from {CONTEXTS[0]} to {CONTEXTS[-1]} frames")
    linear = CONTEXTS[-1] / CONTEXTS[0]
    growth = curves["cached"][-1] / curves["cached"][0]
    print(
        f"  cached growth x{growth:.2f} for x{linear:g} context (far less than linear: "
        f"{_verdict(growth < 0.5 * linear)})"
    )
    print(f"  plot: {plot_curves(curves, plot)}")


def plot_curves(curves: dict[str, list[float]], path: Path) -> Path:
    """Log-scale line chart of ms per step against context length, drawn with PIL."""
    width, height, margin = 640, 400, 72
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    values = [v for curve in curves.values() for v in curve]
    lo, hi = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    hi = max(hi, lo + 1)

    def point(i: int, ms: float) -> tuple[float, float]:
        x = margin + i * (width - 2 * margin) / (len(CONTEXTS) - 1)
        y = height - margin - (math.log10(ms) - lo) / (hi - lo) * (height - 2 * margin)
        return x, y

    draw.rectangle([margin, margin, width - margin, height - margin], outline="black")
    for decade in range(lo, hi + 1):
        _, y = point(0, 10.0**decade)
        draw.line([margin, y, width - margin, y], fill=(220, 220, 220))
        draw.text((8, y - 6), f"{10.0**decade:g} ms", fill="black")
    for i, c in enumerate(CONTEXTS):
        x, _ = point(i, 10.0**lo)
        draw.text((x - 6, height - margin + 8), str(c), fill="black")
    colours = {"cached": (31, 119, 180), "uncached": (214, 39, 40)}
    for n, (name, curve) in enumerate(curves.items()):
        points = [point(i, ms) for i, ms in enumerate(curve)]
        draw.line(points, fill=colours[name], width=3)
        for x, y in points:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colours[name])
        draw.text((margin + 10, margin + 10 + 16 * n), name, fill=colours[name])
    draw.text(
        (width // 2 - 140, 20), "engine step time vs context (frames), log scale", fill="black"
    )
    draw.text((width // 2 - 50, height - 25), "context frames", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def bench_gpu(steps: int, repeats: int) -> None:
    if not torch.cuda.is_available():
        print("[gpu] no CUDA device here: base / large batch 1 and 64 not measured")
        return
    device = torch.device("cuda")
    print(f"[gpu] {torch.cuda.get_device_name(device)}, bf16, {steps} MaskGIT steps, context 8")
    print(f"  {check_backends_agree(device, torch.bfloat16).render()}")
    for preset in ("base", "large"):
        models = build(preset, max_frames=None, device="cuda")
        for backend in available_backends(device, torch.bfloat16):
            sim = engine(models, steps, device="cuda", dtype="bfloat16", attention=backend)
            for batch in (1, 64):
                torch.cuda.reset_peak_memory_stats(device)
                seconds = median_step(sim, 8, repeats, batch)
                peak = torch.cuda.max_memory_allocated(device) / 2**30
                print(
                    f"  {preset:<5} {backend:<10} batch {batch:>2}: {batch / seconds:9.1f} "
                    f"frames/s ({seconds * 1e3:7.1f} ms/step), peak {peak:5.2f} GiB"
                )
        del models
        torch.cuda.empty_cache()


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def timed(label: str, fn: Callable[[], None]) -> None:
    t0 = time.perf_counter()
    fn()
    print(f"  ({label} took {time.perf_counter() - t0:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="MaskGIT steps per frame")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--frames", type=int, default=64, help="steps of the sustained rollout")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--plot", type=Path, default=Path("out/bench_engine_context.png"))
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, 16 frames")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.frames = 1, 16
    torch.set_num_threads(args.threads)
    print(f"[machine] torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"  {check_backends_agree('cpu', torch.bfloat16).render()}")
    timed("fps", lambda: bench_cache_speedup(args.steps, args.repeats))
    timed("sustained", lambda: bench_sustained(args.steps, args.frames))
    timed("context", lambda: bench_context(args.steps, args.repeats, args.plot))
    bench_gpu(args.steps, args.repeats)


if __name__ == "__main__":
    main()
