"""`worldsim rollout`: play an action sequence in a world checkpoint and write the video.

    worldsim rollout --checkpoint WORLD --prompt IMAGE_OR_CLIP --actions "0,0,3,3" --out x.mp4

The prompt is an image, a video or a shard sample (simulator.prompt.load_prompt). A clip keeps
its last frames that fit the window, with the actions between them: a latent action world infers
them with its LAM, a discrete world takes a shard sample's true actions; otherwise the clip's last
frame alone starts the world. Actions are ids, or names where the world's action space has them.
The video (`.mp4` or `.gif`) shows the decoded prompt frames, then one frame per action.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from simulator.world_spec import parse_actions, read_world_spec

# torch and the models load inside the functions, after every argument has been checked: a typo
# in --actions is refused in a fraction of a second, not after seconds of imports.
if TYPE_CHECKING:
    from simulator.engine import WorldSimulator
    from simulator.prompt import LoadedPrompt

VIDEO_WRITERS = (".mp4", ".gif")


def write_video(
    clip_THWC: np.ndarray, path: str | os.PathLike[str], fps: float, scale: int
) -> Path:
    """uint8 frames (T, H, W, 3) -> `path` (.mp4 H.264 or .gif), enlarged `scale` times."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_WRITERS:
        raise ValueError(f"--out must end in {' or '.join(VIDEO_WRITERS)}, got {path.name!r}")
    if suffix == ".mp4":
        from worldsim.train.monitor import write_side_by_side_mp4

        return write_side_by_side_mp4([clip_THWC], path, fps=fps, scale=scale)
    big = clip_THWC.repeat(scale, axis=1).repeat(scale, axis=2)
    images = [Image.fromarray(frame) for frame in big]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    duration_ms = round(1000 / fps)
    images[0].save(
        tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0
    )
    os.replace(tmp, path)
    return path


def prompt_and_actions(
    loaded: LoadedPrompt, sim: WorldSimulator
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The prompt frames (T, H, W, 3) the world starts from, the actions between them (or None
    for the LAM to infer), and a note on what was kept."""
    frames, t = loaded.frames, len(loaded.frames)
    keep = min(t, sim.max_prompt_frames)
    space = sim.action_space
    if keep > 1 and space.type == "latent" and sim.lam is not None:
        return frames[t - keep :], None, f"last {keep} frames, latent actions from the LAM"
    if keep > 1 and space.type == "discrete" and loaded.actions is not None:
        between = loaded.actions[t - keep : t - 1]  # action i follows frame i
        if between.size and between.min() >= 0 and between.max() < space.n:
            return frames[t - keep :], between[None], f"last {keep} frames with their actions"
    note = "its last frame" if t > 1 else "one frame"
    return frames[t - 1 :], None, note


def rollout_command(
    checkpoint: str,
    prompt: str,
    actions: str,
    out: str,
    steps: int | None = None,
    temperature: float | None = None,
    seed: int = 0,
    fps: float = 8.0,
    device: str = "cpu",
    scale: int = 4,
) -> int:
    """Load the world, roll it out from `prompt` under `actions`, write the video to `out`.
    Every argument is checked against the world's `world.json` before a model loads."""
    if fps <= 0 or scale < 1:
        raise ValueError(f"fps must be > 0 and scale >= 1, got fps {fps}, scale {scale}")
    if Path(out).suffix.lower() not in VIDEO_WRITERS:
        raise ValueError(f"--out must end in {' or '.join(VIDEO_WRITERS)}, got {out!r}")
    spec = read_world_spec(checkpoint)
    ids = parse_actions(actions, spec.action_space)
    sampling = spec.sampling
    if steps is not None:
        sampling = dataclasses.replace(sampling, steps=steps)
    if temperature is not None:
        sampling = dataclasses.replace(sampling, temperature=temperature)
    sampling.validate()
    from simulator.engine import EngineConfig, WorldSimulator
    from simulator.prompt import load_prompt
    from simulator.world_checkpoint import load_world
    from worldsim.train.monitor import to_uint8_clips

    loaded = load_prompt(prompt)
    world = load_world(checkpoint, device=device)
    cfg = EngineConfig(sampling=sampling, device=device, seed=seed)
    sim = WorldSimulator(world.tokenizer, world.dynamics, world.spec, cfg, world.lam)
    frames, prompt_actions, note = prompt_and_actions(loaded, sim)
    video = sim.rollout(frames[None], [ids], prompt_actions=prompt_actions)
    path = write_video(to_uint8_clips(video[0]), out, fps, scale)
    print(
        f"rollout: prompt {prompt} ({note}), {len(ids)} actions, {sampling.steps} MaskGIT "
        f"steps, temperature {sampling.temperature}, seed {seed} -> {path} "
        f"({video.shape[1]} frames)"
    )
    return 0
