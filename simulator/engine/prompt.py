"""Turning what a player starts a world from into prompt frames for the engine.

`prompt_frames` takes tensors, arrays or PIL images of any size and returns float frames
(B, T, 3, S, S) in [-1, 1] for a tokenizer of image size S: other sizes are centre-cropped to a
square and resized, with a warning that says so. `load_prompt` reads an image file (PNG, JPG,
...), a video file (decord) or a sample of a frame shard (`SHARD.tar` for its first clip,
`SHARD.tar#KEY` for a given one) into uint8 frames (T, H, W, 3) and, for shard samples, their
true actions.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from torch import Tensor

from data_pipeline.schema import decode_sample
from data_pipeline.shard_source import iter_shard_samples
from data_pipeline.video import MEDIA_ERRORS, BadVideo, decode_size, probe_frame_size

if TYPE_CHECKING:
    from simulator.world.action_space import WorldActionSpace


class PromptTaker(Protocol):
    """What a prompt is fitted to (a `WorldSimulator`), described here so this module, which
    the engine imports, needs nothing from the engine."""

    @property
    def max_prompt_frames(self) -> int: ...

    action_space: WorldActionSpace
    lam: Any  # the world's latent action model, or None


VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
PROMPT_DECODE_SIDE = 256  # short side videos are decoded at (see _video_frames)


@dataclass
class LoadedPrompt:
    frames: np.ndarray  # (T, H, W, 3) uint8
    actions: np.ndarray | None  # (T,) true actions of a shard sample (action t follows frame t)


def prompt_frames(prompt: Any, image_size: int) -> Tensor:
    """Prompt -> float frames (B, T, 3, image_size, image_size) in [-1, 1].

    Accepted: a PIL image; uint8 arrays or tensors channels-last, (H, W, 3), (T, H, W, 3) or
    (B, T, H, W, 3); float tensors channels-first in [-1, 1], (3, H, W), (T, 3, H, W) or
    (B, T, 3, H, W). ValueError names anything that cannot be made into such frames."""
    if isinstance(prompt, Image.Image):
        prompt = np.asarray(prompt.convert("RGB"))
    if isinstance(prompt, np.ndarray):
        prompt = torch.from_numpy(np.array(prompt))  # a writable copy
    if not isinstance(prompt, Tensor):
        raise ValueError(
            f"a prompt must be a PIL image, a numpy array or a tensor, got {type(prompt).__name__}"
        )
    if prompt.dtype == torch.uint8:
        frames = _channels_last_to_float(prompt)
    elif prompt.is_floating_point():
        frames = _check_float_frames(prompt)
    else:
        raise ValueError(
            f"prompt pixels must be uint8 (0..255) or float in [-1, 1], got {prompt.dtype}"
        )
    if frames.shape[1] == 0 or frames.shape[0] == 0:
        raise ValueError(f"the prompt holds no frames: shape {tuple(frames.shape)}")
    return _fit_size(frames, image_size)


def _channels_last_to_float(pixels: Tensor) -> Tensor:
    if pixels.ndim not in (3, 4, 5) or pixels.shape[-1] != 3:
        raise ValueError(
            "uint8 prompts are channels-last RGB: (H, W, 3), (T, H, W, 3) or (B, T, H, W, 3); "
            f"got shape {tuple(pixels.shape)}"
        )
    while pixels.ndim < 5:
        pixels = pixels[None]
    return rearrange(pixels.float() / 127.5 - 1, "b t h w c -> b t c h w")


def _check_float_frames(frames: Tensor) -> Tensor:
    if frames.ndim not in (3, 4, 5) or frames.shape[-3] != 3:
        raise ValueError(
            "float prompts are channels-first RGB in [-1, 1]: (3, H, W), (T, 3, H, W) or "
            f"(B, T, 3, H, W); got shape {tuple(frames.shape)}"
        )
    if not torch.isfinite(frames).all():
        raise ValueError("the prompt contains NaN or inf values")
    if frames.numel() and (frames.min() < -1.001 or frames.max() > 1.001):
        raise ValueError(
            f"float prompt pixels must lie in [-1, 1], got {float(frames.min()):.3g}.."
            f"{float(frames.max()):.3g} (uint8 pixels map to x / 127.5 - 1)"
        )
    while frames.ndim < 5:
        frames = frames[None]
    return frames.float()


def _fit_size(frames_BTCHW: Tensor, size: int) -> Tensor:
    """Centre-crop to a square and resize to size x size, warning when anything changes."""
    b, t, _, h, w = frames_BTCHW.shape
    if (h, w) == (size, size):
        return frames_BTCHW
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = frames_BTCHW[..., top : top + side, left : left + side].flatten(0, 1)
    resized = F.interpolate(square, size=(size, size), mode="bilinear", antialias=True)
    crop = f", centre-cropped to {side}x{side}" if h != w else ""
    warnings.warn(
        f"prompt frames are {w}x{h}{crop}; resized to {size}x{size} for this tokenizer",
        stacklevel=3,
    )
    return rearrange(resized.clamp(-1, 1), "(b t) c h w -> b t c h w", b=b, t=t)


def load_prompt(spec: str, max_frames: int | None = None) -> LoadedPrompt:
    """An image file, a video file or a shard sample (`SHARD.tar`, `SHARD.tar#KEY`); with
    `max_frames`, only a clip's last frames are kept (and decoded, for videos)."""
    path_text, _, key = spec.partition("#")
    path = Path(path_text)
    if not path.is_file():
        raise FileNotFoundError(f"prompt {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".tar":
        loaded = _shard_sample(path, key or None)
    elif key:
        raise ValueError(f"'#KEY' selects a clip of a shard (.tar), not of {path.name}")
    elif suffix in VIDEO_SUFFIXES:
        loaded = LoadedPrompt(_video_frames(path, max_frames), None)
    else:
        loaded = LoadedPrompt(_image_frame(path), None)
    if max_frames is not None and len(loaded.frames) > max_frames:
        actions = None if loaded.actions is None else loaded.actions[-max_frames:]
        loaded = LoadedPrompt(loaded.frames[-max_frames:], actions)
    return loaded


def _image_frame(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))[None]
    except (OSError, Image.DecompressionBombError) as err:
        raise ValueError(
            f"cannot read prompt {path}: not an image, a video ({sorted(VIDEO_SUFFIXES)}) or a "
            f"shard (.tar): {err}"
        ) from err


def _video_frames(path: Path, last: int | None) -> np.ndarray:
    """The video's frames (its `last` ones only, when given), decoded at a short side of at
    most PROMPT_DECODE_SIDE: prompts become 64x64 anyway, and a 4K clip must not fill memory."""
    import decord

    try:
        width, height = probe_frame_size(str(path))
        side = min(PROMPT_DECODE_SIDE, width, height)
        dec_w, dec_h = decode_size(width, height, side)
        reader = decord.VideoReader(str(path), width=dec_w, height=dec_h)
        n = len(reader)
        frames = reader.get_batch(list(range(max(0, n - (last or n)), n))).asnumpy()
    except (BadVideo, decord.DECORDError, *MEDIA_ERRORS) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"cannot decode video prompt {path.name}: {reason}") from err
    if len(frames) == 0:
        raise ValueError(f"video prompt {path.name} has no frames")
    return frames


def _shard_sample(path: Path, key: str | None) -> LoadedPrompt:
    errors: list[str] = []

    def on_error(url: str, exn: Exception) -> None:
        errors.append(f"{url}: {exn}")

    keys = []
    for sample in iter_shard_samples(str(path), on_error):
        keys.append(sample.get("__key__", "?"))
        if key is None or keys[-1] == key:
            clip = decode_sample(sample)
            actions = clip.actions if clip.actions is not None and clip.actions.ndim == 1 else None
            return LoadedPrompt(clip.frames, actions)
    if errors:
        raise ValueError(f"cannot read shard prompt: {'; '.join(errors)}")
    shown = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
    raise ValueError(f"no clip {key!r} in {path} (keys: {shown or 'none'})")


def prompt_and_actions(
    loaded: LoadedPrompt, sim: PromptTaker
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The prompt frames (T, H, W, 3) a world starts from, the actions between them (or None for
    the LAM to infer), and a note on what was kept: a clip keeps its last frames that fit the
    window when their actions are known (a shard sample's true actions, as the world's actions)
    or inferable (a latent world's LAM); otherwise its last frame alone starts the world."""
    frames, t = loaded.frames, len(loaded.frames)
    keep = min(t, sim.max_prompt_frames)
    space = sim.action_space
    if keep > 1 and space.type == "latent" and sim.lam is not None:
        return frames[t - keep :], None, f"last {keep} frames, latent actions from the LAM"
    if keep > 1 and space.type != "latent" and loaded.actions is not None:
        between = loaded.actions[t - keep : t - 1]  # action i follows frame i
        between = between if space.continuous else space.from_game(between)
        try:
            space.tensor(between, (keep - 1,), "cpu")  # ids or controls this world takes
        except ValueError:
            pass
        else:
            return frames[t - keep :], between[None], f"last {keep} frames with their actions"
    note = "its last frame" if t > 1 else "one frame"
    return frames[t - 1 :], None, note
