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

import numpy as np
from PIL import Image

from simulator.engine import EngineConfig, WorldSimulator
from simulator.prompt import LoadedPrompt, load_prompt
from simulator.world_checkpoint import WorldActionSpace, load_world
from worldsim.train.monitor import to_uint8_clips, write_side_by_side_mp4

VIDEO_WRITERS = (".mp4", ".gif")


def parse_actions(text: str, space: WorldActionSpace) -> list[int]:
    """'0,0,3,3' -> ids; entries may also be action names (case-insensitive) when the space
    has names. ValueError names the first entry that is neither."""
    names = {name.lower(): i for i, name in enumerate(space.names)}
    ids = []
    for entry in (e.strip() for e in text.split(",")):
        if entry.lstrip("-").isdigit():
            ids.append(int(entry))
        elif entry.lower() in names:
            ids.append(names[entry.lower()])
        else:
            known = f"; names: {', '.join(space.names)}" if space.names else ""
            raise ValueError(f"action {entry!r} is not an id of {space.describe()}{known}")
    bad = [a for a in ids if not 0 <= a < space.n]
    if bad:
        raise ValueError(f"action {bad[0]} is outside the action space: {space.describe()}")
    return ids


def write_video(
    clip_THWC: np.ndarray, path: str | os.PathLike[str], fps: float, scale: int
) -> Path:
    """uint8 frames (T, H, W, 3) -> `path` (.mp4 H.264 or .gif), enlarged `scale` times."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_WRITERS:
        raise ValueError(f"--out must end in {' or '.join(VIDEO_WRITERS)}, got {path.name!r}")
    if suffix == ".mp4":
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
    """Load the world, roll it out from `prompt` under `actions`, write the video to `out`."""
    if fps <= 0 or scale < 1:
        raise ValueError(f"fps must be > 0 and scale >= 1, got fps {fps}, scale {scale}")
    if Path(out).suffix.lower() not in VIDEO_WRITERS:
        raise ValueError(f"--out must end in {' or '.join(VIDEO_WRITERS)}, got {out!r}")
    world = load_world(checkpoint, device=device)
    sampling = world.spec.sampling
    if steps is not None:
        sampling = dataclasses.replace(sampling, steps=steps)
    if temperature is not None:
        sampling = dataclasses.replace(sampling, temperature=temperature)
    cfg = EngineConfig(sampling=sampling, device=device, seed=seed)
    sim = WorldSimulator(world.tokenizer, world.dynamics, world.spec, cfg, world.lam)
    ids = parse_actions(actions, sim.action_space)
    frames, prompt_actions, note = prompt_and_actions(load_prompt(prompt), sim)
    video = sim.rollout(frames[None], [ids], prompt_actions=prompt_actions)
    path = write_video(to_uint8_clips(video[0]), out, fps, scale)
    print(
        f"rollout: prompt {prompt} ({note}), {len(ids)} actions, {sampling.steps} MaskGIT "
        f"steps, temperature {sampling.temperature}, seed {seed} -> {path} "
        f"({video.shape[1]} frames)"
    )
    return 0
