"""The `worldsim` console command: the one file that imports the stages and wires them to flags.

worldsim data shard SOURCE [SOURCE ...] --out DIR [--config PRESET] [--frames 16 ...]
worldsim data info DIR [--sheet PNG]
"""

from __future__ import annotations

import argparse
import logging
import sys
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


def _tokenizer_task(preset: str, overrides: list[str]) -> tuple[Any, Any]:
    from tokenizer.train_task import TokenizerTask, TokenizerTrainConfig

    cfg = load_config(TokenizerTrainConfig, "tokenizer", preset, overrides)
    return TokenizerTask(cfg), cfg.train


# model -> loader of (TrainTask, TrainConfig) from configs/<model>/<preset>.yaml + overrides; the
# imports stay inside so only the chosen stage loads.
TRAIN_TASKS: dict[str, Callable[[str, list[str]], tuple[Any, Any]]] = {
    "tokenizer": _tokenizer_task,
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
    from tokenizer.evaluate import evaluate_tokenizer, write_report
    from tokenizer.model import VideoTokenizer

    model = VideoTokenizer.from_pretrained(args.checkpoint)
    data = LoaderConfig(
        shards=args.shards, split=args.split, batch_size=args.batch_size, shuffle=False,
        num_workers=0,
    )  # fmt: skip
    report = evaluate_tokenizer(model, ShardLoader(data, rank=0, world_size=1), args.max_batches)
    report.checkpoint, report.shards, report.split = args.checkpoint, args.shards, args.split
    out = args.out or str(Path(args.checkpoint) / f"eval_{args.split}.json")
    print(report.render())
    print(f"report: {write_report(report, out)}")
    return 0


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as err:
        print(f"worldsim: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
