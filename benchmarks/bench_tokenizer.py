"""Tokenizer inference speed on this CPU, as ratios measured in one run.

1. Encode + decode frames/s of a randomly initialised tokenizer preset (default `coinrun`, 64x64,
   clips of 16 frames): fp32 vs bf16 autocast. Speed does not depend on the weights.
2. The SDPA attention backend vs the plain-math reference at 256 tokens per frame (the spatial
   attention of a 16x16 grid): the attention op alone on the preset's (B*T, heads, 256, head_dim)
   shapes (issue target: SDPA >= 3x reference), then the whole tokenizer built with each backend.

Timings are medians of `--repeats` runs after `--warmup` runs, at torch's default thread count;
run on an otherwise idle machine (`--quick` is a ~30 s smoke run).

    python benchmarks/bench_tokenizer.py [--preset coinrun] [--batch 4] [--repeats 7] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from tokenizer.config import TokenizerConfig, tokenizer_preset
from tokenizer.model import VideoTokenizer
from worldsim.nn.attention import ATTENTION_BACKENDS

OP_TARGET = 3.0  # issue 3: SDPA >= 3x the reference attention op at 256 tokens per frame
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")


@dataclass
class Timing:
    warmup: int
    repeats: int

    def median(self, fn: Callable[[], object]) -> float:
        """Median wall time of `fn` in seconds, after the warm-up calls."""
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)


def cpuinfo() -> dict[str, str]:
    """The first CPU's fields in /proc/cpuinfo (empty off Linux)."""
    path = Path("/proc/cpuinfo")
    fields: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().split("\n\n")[0].splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return fields


def print_machine() -> None:
    info = cpuinfo()
    bf16 = sorted(set(info.get("flags", "").split()) & set(BF16_CPU_FLAGS)) or ["none found"]
    print(f"[machine] {info.get('model name', 'unknown CPU')}, {os.cpu_count()} CPUs")
    print(f"  torch {torch.__version__}, {torch.get_num_threads()} threads (default)")
    print(f"  torch CPU capability: {torch.backends.cpu.get_cpu_capability()}")
    print(f"  native bf16 CPU flags: {', '.join(bf16)}")


def random_clips(cfg: TokenizerConfig, batch: int, frames: int) -> Tensor:
    """Uniform noise in [-1, 1], (B, T, C, H, W); the work done does not depend on content."""
    gen = torch.Generator().manual_seed(0)
    shape = (batch, frames, cfg.channels, cfg.image_size, cfg.image_size)
    return torch.rand(shape, generator=gen) * 2 - 1


def round_trip(model: VideoTokenizer, frames_BTCHW: Tensor, bf16: bool) -> tuple[Tensor, Tensor]:
    """Tokens (B, T, h, w) and reconstructed frames of one encode + decode."""
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        tokens_BThw = model.encode(frames_BTCHW)
        return tokens_BThw, model.decode(tokens_BThw)


def bench_dtypes(preset: str, frames_BTCHW: Tensor, timing: Timing) -> None:
    model = VideoTokenizer(tokenizer_preset(preset)).eval()
    n = frames_BTCHW.shape[0] * frames_BTCHW.shape[1]
    b, t, _, size, _ = frames_BTCHW.shape
    print(f"[dtype] preset {preset!r}, encode + decode of {b} clips x {t} frames at {size}x{size}")
    seconds = {}
    for name, bf16 in (("fp32", False), ("bf16 autocast", True)):
        seconds[name] = timing.median(partial(round_trip, model, frames_BTCHW, bf16))
        print(f"  {name:<14}: {n / seconds[name]:8.1f} frames/s ({seconds[name]:.3f} s)")
    print(f"  ratio bf16/fp32: {seconds['fp32'] / seconds['bf16 autocast']:.2f}x")
    tokens32, _ = round_trip(model, frames_BTCHW, bf16=False)
    tokens16, _ = round_trip(model, frames_BTCHW, bf16=True)
    agree = (tokens32 == tokens16).float().mean().item()
    print(f"  tokens equal under bf16 and fp32: {agree:.1%} (random init)")


def bench_attention_op(cfg: TokenizerConfig, batch_frames: int, timing: Timing) -> None:
    heads, tokens = cfg.num_heads, cfg.grid**2
    head_dim = cfg.width // heads
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch_frames, heads, tokens, head_dim, generator=gen) for _ in "qkv")
    print(f"[attention op] spatial self-attention, q/k/v {tuple(q.shape)} fp32, not causal")
    seconds = {}
    with torch.inference_mode():
        for name in ("reference", "sdpa"):
            seconds[name] = timing.median(partial(ATTENTION_BACKENDS[name], q, k, v, False))
            print(f"  {name:<9}: {seconds[name] * 1e3:8.2f} ms")
        out = {name: ATTENTION_BACKENDS[name](q, k, v, False) for name in seconds}
    diff = (out["sdpa"] - out["reference"]).abs().max()
    ratio = seconds["reference"] / seconds["sdpa"]
    verdict = "PASS" if ratio >= OP_TARGET else "FAIL"
    print(f"  max |sdpa - reference|: {diff.item():.2e}")
    print(
        f"  ratio sdpa/reference (op level, the issue's target >= {OP_TARGET:.0f}x at "
        f"{tokens} tokens per frame): {ratio:.2f}x  {verdict}"
    )


def bench_attention_model(preset: str, frames_BTCHW: Tensor, timing: Timing) -> None:
    n = frames_BTCHW.shape[0] * frames_BTCHW.shape[1]
    models = {
        name: VideoTokenizer(tokenizer_preset(preset, attention=name)).eval()
        for name in ("reference", "sdpa")
    }
    models["sdpa"].load_state_dict(models["reference"].state_dict())
    print(f"[attention model] preset {preset!r} encode + decode fp32, same weights, by backend")
    seconds = {}
    for name, model in models.items():
        seconds[name] = timing.median(partial(round_trip, model, frames_BTCHW, False))
        print(f"  {name:<9}: {n / seconds[name]:8.1f} frames/s ({seconds[name]:.3f} s)")
    ratio = seconds["reference"] / seconds["sdpa"]
    print(f"  ratio sdpa/reference (whole model, informational; no target): {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="coinrun", help="tokenizer preset (random init)")
    parser.add_argument("--batch", type=int, default=4, help="clips per batch")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="~30 s smoke run: 2 clips, 3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.warmup, args.repeats = 2, 1, 3
    torch.manual_seed(0)
    timing = Timing(args.warmup, args.repeats)
    cfg = tokenizer_preset(args.preset)
    frames_BTCHW = random_clips(cfg, args.batch, args.frames)
    print_machine()
    bench_dtypes(args.preset, frames_BTCHW, timing)
    bench_attention_op(cfg, args.batch * args.frames, timing)
    bench_attention_model(args.preset, frames_BTCHW, timing)


if __name__ == "__main__":
    main()
