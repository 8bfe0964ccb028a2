"""The `worldsim` console command: with `commands/evaluate.py` (the `eval` commands), the layer
above every stage that wires their public functions to flags; nothing imports it.

worldsim data shard SOURCE [SOURCE ...] --out DIR [--config PRESET] [--frames 16 ...]
worldsim data info DIR [--sheet PNG]
worldsim data tokenize SHARDS --checkpoint TOKENIZER [--lam LAM] [--split train] [--out DIR]
worldsim data effects procgen:coinrun [--levels 8] [--out effects.json]
worldsim train {tokenizer,lam,dynamics,idm} --config PRESET [key=value ...]
worldsim eval tokenizer --checkpoint DIR --shards DATA [--split test]
worldsim eval world --world WORLD --shards DATA [--idm IDM --fvd-clips N]
worldsim eval idm --checkpoint IDM --shards DATA [--split test]
worldsim eval fvd --real VIDEOS --fake VIDEOS [--clips 2048 --frames 16]
worldsim rollout [--checkpoint WORLD --prompt IMAGE_OR_CLIP] --actions "0,0,3,3" --out rollout.mp4
worldsim play [--world WORLD] [--shards DIR ...]
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from commands.evaluate import GUIDANCE_HELP, add_eval_commands
from worldsim.config import (
    add_dataclass_flags,
    flags_to_dict,
    from_dict,
    load_config,
    load_yaml_layers,
    preset_path,
)

SHARD_YAML_ONLY = {"sources", "action_weights"}  # not flags: positional, or a list (YAML)


def _data_shard(args: argparse.Namespace) -> int:
    from data_pipeline.config import ShardConfig
    from data_pipeline.shard_job import run_shard_job

    data = load_yaml_layers(preset_path("data", args.config)) if args.config else {}
    data.update(flags_to_dict(args, ShardConfig, skip=SHARD_YAML_ONLY))
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

    from tokenizer.registry import load_tokenizer
    from tokenizer.tokenize_shards import tokenize_shards

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(args.checkpoint).to(device)
    lam = None
    if args.lam:
        from simulator.models.lam import (
            LatentActionModel,  # the CLI may join stages; tokenizer/ may not
        )

        lam = LatentActionModel.from_pretrained(args.lam).to(device)
    report = tokenize_shards(
        tokenizer, args.shards, args.split, args.out, tokenizer_checkpoint=args.checkpoint,
        lam=lam, lam_checkpoint=args.lam, batch_size=args.batch_size,
    )  # fmt: skip
    print(report.render())
    return 0


def _data_effects(args: argparse.Namespace) -> int:
    from data_pipeline.action_effects import measure_action_effects

    effects = measure_action_effects(
        args.game, levels=args.levels, probes_per_level=args.probes, steps=args.steps,
        distribution_mode=args.mode,
    )  # fmt: skip
    print(effects.render())
    if args.out:
        from worldsim.io.files import write_atomic

        write_atomic(Path(args.out), effects.to_json().encode())
        print(f"effects: {args.out}")
    return 0


def _add_data_effects(data_cmds: Any) -> None:
    effects = data_cmds.add_parser(
        "effects", help="measure which action ids a game treats as one (procgen saved states)"
    )
    effects.add_argument("game", help="e.g. procgen:coinrun")
    effects.add_argument("--levels", type=int, default=8, help="levels probed")
    effects.add_argument("--probes", type=int, default=4, help="game states probed per level")
    effects.add_argument("--steps", type=int, default=6, help="steps each action is held")
    effects.add_argument("--mode", default="hard", help="procgen distribution_mode")
    effects.add_argument("--out", default=None, help="JSON file for the groups")
    effects.set_defaults(func=_data_effects)


def _tokenizer_task(preset: str, overrides: list[str]) -> tuple[Any, Any]:
    from tokenizer.train_task import TokenizerTask, TokenizerTrainConfig

    cfg = load_config(TokenizerTrainConfig, "tokenizer", preset, overrides)
    return TokenizerTask(cfg), cfg.train


def _delta_task(preset: str, overrides: list[str]) -> tuple[Any, Any]:
    from tokenizer.delta_task import DeltaTask, DeltaTrainConfig

    cfg = load_config(DeltaTrainConfig, "delta", preset, overrides)
    return DeltaTask(cfg), cfg.train


def _lam_task(preset: str, overrides: list[str]) -> tuple[Any, Any]:
    from simulator.tasks.lam_task import lam_task

    return lam_task(preset, overrides)


def _dynamics_task(preset: str, overrides: list[str]) -> tuple[Any, Any]:
    from simulator.tasks.dynamics_task import dynamics_task

    return dynamics_task(preset, overrides)


def _idm_task(preset: str, overrides: list[str]) -> tuple[Any, Any]:
    from simulator.evaluation.idm_task import idm_task

    return idm_task(preset, overrides)


# model -> loader of (TrainTask, TrainConfig) from configs/<model>/<preset>.yaml + overrides; the
# imports stay inside so only the chosen stage loads.
TRAIN_TASKS: dict[str, Callable[[str, list[str]], tuple[Any, Any]]] = {
    "tokenizer": _tokenizer_task,
    "delta": _delta_task,
    "lam": _lam_task,
    "dynamics": _dynamics_task,
    "idm": _idm_task,
}


# What `worldsim train --help` calls a model whose command name is not a whole name.
TRAIN_NAMES = {
    "delta": "delta tokenizer",
    "lam": "latent action model",
    "idm": "inverse dynamics model",
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


def _rollout(args: argparse.Namespace) -> int:
    from simulator.engine.rollout import rollout

    world = args.checkpoint or "the shipped world"
    print(f"worldsim rollout: loading {world} and playing {args.actions!r} ...", flush=True)
    result = rollout(
        args.actions, args.out, checkpoint=args.checkpoint, prompt=args.prompt, steps=args.steps,
        temperature=args.temperature, guidance=args.guidance, seed=args.seed, fps=args.fps,
        device=args.device,
    )  # fmt: skip
    print(result.render())
    if args.checkpoint is None:
        print("play this world in your browser: worldsim play")
    return 0


def _play(args: argparse.Namespace) -> int:
    from demo.app import launch
    from demo.uploads import shard_clips

    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own requests to itself
    world = _world_folder(args.world)
    clips = shard_clips(args.shards, split=args.split) if args.shards else []
    print(f"worldsim play: loading {world}")
    launch(world, clips, host=args.host, port=args.port, device=args.device,
           open_browser=args.open, threads=args.threads)  # fmt: skip
    return 0


def _world_folder(given: str | None) -> Path:
    """A world folder, or the name of a world shipped in the package ("coinrun", "carracing");
    None: the default shipped world."""
    from worldsim.worlds import shipped_world

    if given is None:
        return shipped_world()
    if Path(given).is_dir() or "/" in given:
        return Path(given)
    return shipped_world(given)


def _pack(args: argparse.Namespace) -> int:
    from simulator.world.checkpoint import pack_world

    names = args.action_names.split(",") if args.action_names else None
    path, spec = pack_world(
        args.tokenizer, args.dynamics, args.out, lam_path=args.lam, steer=args.steer,
        action_names=names, steps=args.steps, temperature=args.temperature,
        guidance=args.guidance, action_ranges=_ranges(args.action_ranges),
    )  # fmt: skip
    print(f"world: {path}, steered by {spec.action_space.describe()}")
    return 0


def _ranges(text: str | None) -> list[tuple[float, float]] | None:
    """'-1:1,0:1' -> [(-1, 1), (0, 1)]."""
    if not text:
        return None
    try:
        return [(float(lo), float(hi)) for lo, hi in (r.split(":") for r in text.split(","))]
    except ValueError as err:
        raise ValueError(f"--action-ranges must be LOW:HIGH,... (-1:1,0:1), got {text!r}") from err


def _add_pack(stages: Any) -> None:
    pack = stages.add_parser("pack", help="bundle tokenizer, dynamics and LAM into a world folder")
    pack.add_argument("--tokenizer", required=True, help="tokenizer save_pretrained folder")
    pack.add_argument("--dynamics", required=True, help="dynamics save_pretrained folder")
    pack.add_argument("--lam", default=None, help="latent action model folder (optional)")
    pack.add_argument("--out", required=True, help="world folder to write")
    pack.add_argument("--steer", choices=["latent", "discrete", "continuous"], default=None)
    pack.add_argument(
        "--action-ranges", default=None,
        help="continuous controls' ranges, LOW:HIGH each, comma-separated (e.g. -1:1,0:1,0:1)",
    )  # fmt: skip
    pack.add_argument("--action-names", default=None, help='e.g. "LEFT,RIGHT,..." (discrete)')
    pack.add_argument("--steps", type=int, default=None, help="default MaskGIT steps (4)")
    pack.add_argument("--temperature", type=float, default=None, help="default temperature (1)")
    pack.add_argument("--guidance", type=float, default=None, help=GUIDANCE_HELP)
    pack.set_defaults(func=_pack)


def _add_rollout(stages: Any) -> None:
    roll = stages.add_parser("rollout", help="play an action sequence in a world; write mp4/GIF")
    roll.add_argument("--checkpoint", default=None, help="world folder (default: the shipped one)")
    roll.add_argument(
        "--prompt", default=None, help="image, video or SHARD.tar[#KEY] (default: a start frame)"
    )
    roll.add_argument("--actions", required=True, help='ids or names, e.g. "0,0,3,3", "RIGHT*8"')
    roll.add_argument("--out", required=True, help="rollout.mp4 or rollout.gif")
    roll.add_argument("--steps", type=int, default=None, help="MaskGIT steps (default: world.json)")
    roll.add_argument("--temperature", type=float, default=None)
    roll.add_argument("--guidance", type=float, default=None, help=GUIDANCE_HELP)
    roll.add_argument("--seed", type=int, default=0)
    roll.add_argument("--fps", type=float, default=8.0)
    roll.add_argument("--device", default="cpu")
    roll.set_defaults(func=_rollout)


def _add_play(stages: Any) -> None:
    play = stages.add_parser("play", help="steer a world in the browser (Gradio app)")
    play.add_argument(
        "--world", default=None,
        help="world folder, or a shipped world's name: coinrun (default) or carracing",
    )  # fmt: skip
    play.add_argument("--shards", nargs="*", default=None, help="shard folders to start from")
    play.add_argument("--split", default="test", help="split of --shards to offer")
    play.add_argument("--host", default="127.0.0.1", help="0.0.0.0 serves other machines")
    play.add_argument("--port", type=int, default=None, help="default 7860, or the next free")
    play.add_argument("--device", default="cpu")
    play.add_argument("--open", action="store_true", help="open a browser tab")
    play.add_argument(
        "--threads", type=int, default=None,
        help="torch threads for the models (default: half the cores, leaving the rest to a "
        "browser on the same machine)",
    )  # fmt: skip
    play.set_defaults(func=_play)


def build_parser() -> argparse.ArgumentParser:
    from data_pipeline.config import ShardConfig

    parser = argparse.ArgumentParser(
        prog="worldsim",
        description="worldsim: a video-pretrained generative world simulator. Turn clips and "
        "game episodes into shards, train the tokenizer, latent actions and dynamics, score "
        "worlds, and play them in the browser.",
    )
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
    add_dataclass_flags(shard, ShardConfig, skip=SHARD_YAML_ONLY)
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
    _add_data_effects(data_cmds)

    trainer = stages.add_parser("train", help="train a model with the shared accelerate driver")
    models = trainer.add_subparsers(dest="model", required=True)
    for name in TRAIN_TASKS:
        sub = models.add_parser(name, help=f"train the {TRAIN_NAMES.get(name, name)}")
        sub.add_argument(
            "--config", required=True, help=f"preset in configs/{name}/ or a YAML path"
        )
        sub.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.steps=2000")
        sub.set_defaults(func=_train)

    add_eval_commands(stages)
    _add_pack(stages)
    _add_rollout(stages)
    _add_play(stages)
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
