"""Held keys: long rollouts from unseen start frames, one key held the whole time per row, drawn
as a contact sheet and an mp4. It answers what numbers do not: does each key do what a player
expects, does the level's look survive, and where does the world break.

Rows are the keys a player uses most (LEFT, RIGHT, JUMP, still), found by name in the world's
action space (a world steered by latent actions has no such names and is refused); a world of
continuous controls (steer, gas, brake) gets the driver's rows instead (`HELD_CONTROLS`). Each key's
view shift (`view_shift`: how far the scene moved between the start and a later frame) says in
numbers whether RIGHT scrolls the level left, LEFT the other way and JUMP the camera up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# A driven world's rows: control name -> value, the rest at rest. Steering rows keep a little
# gas so that a car rolling from the start frame keeps moving through the turn.
HELD_CONTROLS: dict[str, dict[str, float]] = {
    "left": {"steer": -1.0, "gas": 0.3},
    "right": {"steer": 1.0, "gas": 0.3},
    "gas": {"gas": 1.0},
    "brake": {"brake": 1.0},
    "still": {},
}


def held_key_actions(engine: WorldSimulator) -> dict[str, Any]:
    """Row label -> action id (or control vector) in the engine's action space."""
    space = engine.action_space
    if space.continuous:
        names = [n.lower() for n in space.names]
        missing = {c for row in HELD_CONTROLS.values() for c in row} - set(names)
        if missing:
            raise ValueError(
                f"the world has no control named {sorted(missing)} ({space.describe()})"
            )
        rest = space.idle()
        assert isinstance(rest, list)
        return {
            label: [row.get(name, r) for name, r in zip(names, rest, strict=True)]
            for label, row in HELD_CONTROLS.items()
        }
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


def view_shift(before_BCHW: Tensor, after_BCHW: Tensor, max_shift: int = 12) -> Tensor:
    """(B, 2) integer (dx, dy) in pixels by which the scene moved from `before` to `after`:
    the translation of `before` that best matches `after` (least squared error) on the central
    crop both frames share. dx < 0: the scene moved left in the frame, as it does when the view
    follows a player walking right; dy > 0: it moved down (the view went up). Ties, as in a
    flat sky, go to the smallest shift."""
    h, w, m = after_BCHW.shape[-2], after_BCHW.shape[-1], max_shift
    if min(h, w) <= 2 * m:
        raise ValueError(f"frames of {h}x{w} px leave no crop for shifts up to {m} px")
    target = after_BCHW[..., m : h - m, m : w - m].float()
    errors, shifts = [], []
    for dy in range(-m, m + 1):
        for dx in range(-m, m + 1):
            moved = before_BCHW[..., m - dy : h - m - dy, m - dx : w - m - dx].float()
            # a tiny cost per pixel of shift breaks ties toward no motion
            errors.append((moved - target).pow(2).mean(dim=(1, 2, 3)) + 1e-6 * (abs(dx) + abs(dy)))
            shifts.append((dx, dy))
    best = torch.stack(errors, dim=1).argmin(dim=1)
    return torch.tensor(shifts, device=best.device)[best]


@dataclass
class HeldKeys:
    paths: list[Path]  # held_keys.png and held_keys.mp4
    shift_after: int  # the frame whose view shift from the start is measured
    # key label -> (dx, dy) view shift of each start (S, 2) after `shift_after` frames
    shifts: dict[str, Tensor]

    def render(self) -> str:
        lines = [f"view shift from the start to frame {self.shift_after} (px, median of starts):"]
        for key, s in self.shifts.items():
            dx, dy = s.float().median(dim=0).values.tolist()
            left = int((s[:, 0] < 0).sum())
            lines.append(
                f"  {key:<6} dx {dx:+.0f}, dy {dy:+.0f}; the scene moved left in {left} of "
                f"{len(s)} starts"
            )
        return "\n".join(lines)


def write_held_keys(
    engine: WorldSimulator,
    starts_BCHW: Tensor,
    out_dir: str | Path,
    steps: int = 64,
    every: int = 4,
    seed: int = 0,
    shift_after: int = 8,
) -> HeldKeys:
    """`held_keys.png` (one labelled row per start and key: every `every`-th frame and the
    last) and `held_keys.mp4` (keys as rows, starts as columns, all frames), and each key's view
    shift from the start to frame `shift_after`."""
    rows_by_key = held_key_actions(engine)
    labels = list(rows_by_key)
    with torch.no_grad():
        video = held_action_rollouts(engine, starts_BCHW, list(rows_by_key.values()), steps, seed)
    after = min(shift_after, steps)
    reach = min(12, min(video.shape[-2:]) // 4)  # 12 px: ~5 steps of CoinRun's top speed
    shifts = {
        key: view_shift(video[:, i, 0], video[:, i, after], reach).cpu()
        for i, key in enumerate(labels)
    }
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
    return HeldKeys([png, mp4], after, shifts)


def _label_cell(text: str, size: int) -> np.ndarray:
    """A white (size, size, 3) cell with `text` written in it: the row's key."""
    cell = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(cell).text((3, size // 2), text, fill="black", anchor="lm")
    return np.asarray(cell)
