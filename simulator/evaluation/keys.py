"""Held keys: long rollouts from unseen start frames, one key held the whole time per row, drawn
as a contact sheet and an mp4. It answers what numbers do not: does each key do what a player
expects, does the level's look survive, and where does the world break.

Rows are the keys a player uses most (LEFT, RIGHT, JUMP, still), found by name in the world's
action space (a world steered by latent actions has no such names and is refused).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image, ImageDraw
from torch import Tensor

from simulator.engine.world_simulator import WorldSimulator
from simulator.evaluation.figures import held_action_rollouts
from worldsim.io.media import to_uint8_clips, write_grid_png, write_side_by_side_mp4

# row label -> the action names that stand for it, first match wins
HELD_KEYS: dict[str, tuple[str, ...]] = {
    "LEFT": ("LEFT",),
    "RIGHT": ("RIGHT",),
    "JUMP": ("UP", "JUMP"),
    "still": ("NOOP",),
}


def held_key_actions(engine: WorldSimulator) -> dict[str, int]:
    """Row label -> action id in the engine's action space."""
    names = [n.upper() for n in engine.action_space.names]
    rows = {}
    for label, wanted in HELD_KEYS.items():
        found = [names.index(w) for w in wanted if w in names]
        if not found:
            raise ValueError(
                f"the world has no action named {' or '.join(wanted)} for the {label} row "
                f"(its actions: {engine.action_space.describe()}, names {names or 'none'})"
            )
        rows[label] = found[0]
    return rows


def write_held_keys(
    engine: WorldSimulator,
    starts_BCHW: Tensor,
    out_dir: str | Path,
    steps: int = 64,
    every: int = 4,
    seed: int = 0,
) -> list[Path]:
    """`held_keys.png` (one labelled row per start and key: every `every`-th frame and the
    last) and `held_keys.mp4` (keys as rows, starts as columns, all frames)."""
    rows_by_key = held_key_actions(engine)
    labels = list(rows_by_key)
    with torch.no_grad():
        video = held_action_rollouts(engine, starts_BCHW, list(rows_by_key.values()), steps, seed)
    clips = to_uint8_clips(video)  # (S, K, T, H, W, 3)
    shown = sorted(set(range(0, steps + 1, every)) | {steps})
    size = clips.shape[-2]
    rows = [
        np.concatenate([_label_cell(labels[k], size)[None], clips[s, k][shown]])
        for s in range(clips.shape[0])
        for k in range(len(labels))
    ]
    out = Path(out_dir)
    png = write_grid_png(rows, out / "held_keys.png")
    tiles = rearrange(clips, "s k t h w c -> s t (k h) w c")  # keys stacked in each column
    mp4 = write_side_by_side_mp4(list(np.ascontiguousarray(tiles)), out / "held_keys.mp4", 8, 2)
    return [png, mp4]


def _label_cell(text: str, size: int) -> np.ndarray:
    """A white (size, size, 3) cell with `text` written in it: the row's key."""
    cell = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(cell).text((3, size // 2), text, fill="black", anchor="lm")
    return np.asarray(cell)
