"""What a player may start a world from, checked before anything decodes it: built-in start
frames of the world folder, clips of the shards the server was started with, and uploads.

Every refusal is a `PlayError` whose message the app shows as it is: a player sees "this file is
not an image or a video", never a stack trace. Limits keep one upload from stalling the server:
the file size (the app also caps it in Gradio), the pixel count of images (a small PNG can
declare gigapixels) and the frames decoded from clips (their last ones only).
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from simulator.engine.prompt import VIDEO_SUFFIXES, LoadedPrompt, load_prompt

MAX_UPLOAD_MB = 20
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_ASPECT = 4.0  # wider (or taller) than this cannot be centre-cropped into a useful square
MIN_SIDE = 8  # smaller frames hold too little to enlarge into a 64x64 start (a 1x1 is noise)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp"}


class PlayError(ValueError):
    """A problem the player can fix; its message is shown in the app as written."""


@dataclass(frozen=True)
class BuiltinStart:
    path: Path
    label: str  # e.g. "easy level 100003"


def builtin_starts(world: Path) -> list[BuiltinStart]:
    """The start frames a world folder ships (`starts/*.png`, labelled by `starts.json`)."""
    folder = world / "starts"
    labels: dict[str, str] = {}
    if (folder / "starts.json").is_file():
        for entry in json.loads((folder / "starts.json").read_text()):
            mode, level = entry.get("distribution_mode", ""), entry.get("level_seed", "")
            labels[entry["file"]] = entry.get("label") or f"{mode} level {level}".strip()
    return [
        BuiltinStart(path, labels.get(path.name, path.stem))
        for path in sorted(folder.glob("*.png"))
    ]


def shard_clips(folders: list[str], split: str = "test", limit: int = 200) -> list[str]:
    """`SHARD.tar#KEY` of the first `limit` clips of `split` in shard folders, read from the tar
    headers alone: the clips a server started with `--shards` offers its players."""
    found: list[str] = []
    for folder in folders:
        shards = sorted(Path(folder).glob(f"{split}-*.tar"))
        if not shards:
            raise FileNotFoundError(f"no {split}-*.tar shards in {folder}")
        for shard in shards:
            with tarfile.open(shard) as tar:
                keys = dict.fromkeys(m.name.split(".", 1)[0] for m in tar.getmembers())
            found += [f"{shard}#{key}" for key in keys]
            if len(found) >= limit:
                return found[:limit]
    return found


def load_start(path: str | os.PathLike[str], max_frames: int, label: str = "") -> LoadedPrompt:
    """The last `max_frames` frames of an image, a video or a shard sample (`SHARD.tar#KEY`),
    or a PlayError naming the problem (`label`, else the file name, stands for the file)."""
    spec = os.fspath(path)
    file = Path(spec.partition("#")[0])
    name = label or file.name
    if not file.is_file():
        raise PlayError(f"{name}: no such file")
    size_mb = file.stat().st_size / 2**20
    if size_mb > MAX_UPLOAD_MB:
        raise PlayError(f"{name} is {size_mb:.0f} MB; the limit is {MAX_UPLOAD_MB} MB")
    if file.stat().st_size == 0:
        raise PlayError(f"{name} is empty")
    suffix = file.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        _check_image(file, name)
    elif suffix not in VIDEO_SUFFIXES and suffix != ".tar":
        kinds = ", ".join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))
        raise PlayError(f"{name} is not an image or a video this app reads ({kinds})")
    try:
        loaded = load_prompt(spec, max_frames=max_frames)
    except (ValueError, OSError) as err:
        raise PlayError(f"{name} could not be read: {_first_line(err, file)}") from err
    frames = loaded.frames
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise PlayError(f"{name} holds no frames")
    _check_aspect(frames.shape[2], frames.shape[1], name)
    return LoadedPrompt(np.ascontiguousarray(frames), loaded.actions)


def _check_image(file: Path, name: str) -> None:
    try:
        with Image.open(file) as image:  # reads the header only
            width, height = image.size
    except (OSError, Image.DecompressionBombError) as err:
        reason = _first_line(err, file)
        raise PlayError(f"{name} is not an image this app can read: {reason}") from err
    if width * height > MAX_IMAGE_PIXELS:
        raise PlayError(
            f"{name} is {width}x{height} pixels; the limit is {MAX_IMAGE_PIXELS:,} pixels "
            "(the world plays at 64x64: a screenshot is plenty)"
        )
    _check_aspect(width, height, name)


def _check_aspect(width: int, height: int, name: str) -> None:
    if min(width, height) < MIN_SIDE:
        raise PlayError(
            f"{name} is {width}x{height} pixels: too small to start a world from (at least "
            f"{MIN_SIDE}x{MIN_SIDE}; the world plays at 64x64)"
        )
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise PlayError(
            f"{name} is {width}x{height}: too far from square (the world's frames are square; "
            f"at most {MAX_ASPECT:g}:1 is centre-cropped)"
        )


def _first_line(err: BaseException, file: Path) -> str:
    """The error's first line as a player should read it: the file by its name, not the
    server's temporary path, and no errno."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    text = text.replace(str(file), file.name).replace(str(file.parent) + os.sep, "")
    return re.sub(r"\[Errno \d+\]\s*", "", text)
