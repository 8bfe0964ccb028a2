"""The pictures of `worldsim eval world`: metrics against horizon, and the action sheet.

Drawn with PIL (matplotlib is not a dependency): a line chart is a few dozen lines of PIL, and
the sheet reuses the training monitor's grid writer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from simulator.engine.world_simulator import WorldSimulator
from simulator.evaluation.actions import (
    COPY,
    LAM,
    RANDOM_LATENT,
    RANDOM_TRUE,
    TOKENIZER,
    TRUE,
)
from worldsim.io.media import save_png, to_uint8_clips, write_grid_png

COLORS = {  # curve name -> RGB; unknown names cycle through EXTRA_COLORS
    TOKENIZER: (150, 150, 150),
    COPY: (20, 20, 20),
    TRUE: (31, 119, 180),
    RANDOM_TRUE: (174, 199, 232),
    LAM: (214, 39, 40),
    RANDOM_LATENT: (255, 152, 150),
}
LABELS = {
    TOKENIZER: "tokenizer (ceiling)",
    COPY: "copy prompt frame",
    TRUE: "true actions",
    RANDOM_TRUE: "random true",
    LAM: "LAM actions",
    RANDOM_LATENT: "random latent",
}
EXTRA_COLORS = [(44, 160, 44), (148, 103, 189), (140, 86, 75), (227, 119, 194)]
SIZE, LEFT, RIGHT, TOP, BOTTOM = (720, 420), 56, 170, 48, 44  # pixels: image and plot margins


def _y_ticks(lo: float, hi: float) -> list[float]:
    """Round-numbered ticks (steps of 1, 2 or 5 times a power of ten) covering [lo, hi], about
    4-8 of them."""
    steps = [m * 10.0**e for e in range(-3, 3) for m in (1, 2, 5)]
    step = next(s for s in steps if (hi - lo) / s <= 8)
    return [step * k for k in range(math.floor(lo / step), math.ceil(hi / step) + 1)]


def write_curve_plot(
    curves: dict[str, list[float]], title: str, y_label: str, path: str | Path
) -> Path:
    """Line chart of every curve (name -> value at generated frames 1..H)."""
    values = [v for c in curves.values() for v in c if math.isfinite(v)]
    if not values:
        raise ValueError("no finite values to plot")
    pad = max(values) - min(values) or 1.0
    ticks = _y_ticks(min(values) - 0.05 * pad, max(values) + 0.05 * pad)
    lo, hi = ticks[0], ticks[-1]
    width, height = SIZE
    x0, x1, y0, y1 = LEFT, width - RIGHT, height - BOTTOM, TOP  # plot box, y grows downwards
    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=13)
    horizon = max(len(c) for c in curves.values())

    def xy(k: int, v: float) -> tuple[float, float]:
        fx = (k - 1) / max(1, horizon - 1)
        return x0 + fx * (x1 - x0), y0 - (v - lo) / (hi - lo) * (y0 - y1)

    for tick in ticks:
        y = xy(1, tick)[1]
        draw.line([(x0, y), (x1, y)], fill=(225, 225, 225))
        draw.text((x0 - 6, y), f"{tick:g}", fill="black", font=font, anchor="rm")
    for k in range(1, horizon + 1):
        x = xy(k, lo)[0]
        draw.line([(x, y0), (x, y0 + 4)], fill="black")
        draw.text((x, y0 + 6), str(k), fill="black", font=font, anchor="ma")
    draw.rectangle([x0, y1, x1, y0], outline="black")
    draw.text((x0, 6), title, fill="black", font=font)
    draw.text(((x0 + x1) / 2, height - 14), "generated frame (prompt = frame 0)", fill="black",
              font=font, anchor="ma")  # fmt: skip
    draw.text((8, y1 - 20), y_label, fill="black", font=font)
    for i, (name, curve) in enumerate(curves.items()):
        color = COLORS.get(name, EXTRA_COLORS[i % len(EXTRA_COLORS)])
        points = [xy(k, v) for k, v in enumerate(curve, start=1) if math.isfinite(v)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for px, py in points:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=color)
        ly = y1 + 8 + 18 * i
        draw.line([(x1 + 12, ly), (x1 + 32, ly)], fill=color, width=3)
        label = LABELS.get(name, name.replace("_", " "))
        draw.text((x1 + 38, ly), label, fill="black", font=font, anchor="lm")
    return save_png(image, path)


@torch.no_grad()
def write_action_sheet(
    engine: WorldSimulator,
    frames_BTCHW: Tensor,
    path: str | Path,
    *,
    steps: int = 4,
    seed: int = 0,
    usage: list[int] | None = None,
) -> Path:
    """Contact sheet of what each action of the engine's action space does: one row per start
    frame (frame 0 of each clip), then one column per action showing the frame after `steps`
    repeats of that action from the start frame alone. With `usage` (a count per action), a last
    row of bars shows each action's share."""
    last = repeated_action_frames(engine, frames_BTCHW[:, :1], steps, seed)  # (R, A, C, H, W)
    start = frames_BTCHW[:, :1].to(last.device)
    clips = list(to_uint8_clips(torch.cat([start, last], dim=1)))
    if usage is not None:
        count = last.shape[1]
        if len(usage) > count:
            raise ValueError(f"usage has {len(usage)} entries for {count} actions")
        clips.append(_usage_row(usage + [0] * (count - len(usage)), clips[0].shape[1:3]))
    return write_grid_png(clips, path)


def repeated_action_frames(
    engine: WorldSimulator, start_BTCHW: Tensor, steps: int, seed: int
) -> Tensor:
    """Frames (R, A, C, H, W): from each start frame (R, 1, C, H, W), the frame the engine makes
    after `steps` repeats of each of its A actions."""
    actions = list(range(engine.action_space.n))
    return held_action_rollouts(engine, start_BTCHW[:, 0], actions, steps, seed)[:, :, -1]


def held_action_rollouts(
    engine: WorldSimulator, starts_BCHW: Tensor, actions: list[Any], steps: int, seed: int
) -> Tensor:
    """Video (S, A, 1 + steps, C, H, W): from each of S start frames, the start and `steps`
    frames with each of the A `actions` (ids, or a continuous world's control vectors) held,
    all rolled out as one batch."""
    count, rows = len(actions), starts_BCHW.shape[0]
    prompts = starts_BCHW[:, None].repeat_interleave(count, dim=0)  # (S*A, 1, C, H, W)
    held = torch.tensor(actions).repeat(rows, *[1] * (torch.tensor(actions).ndim - 1))
    ids = held[:, None].expand(-1, steps, *held.shape[1:])
    video = engine.rollout(prompts, ids, seed=seed)
    return rearrange(video, "(s a) t c h w -> s a t c h w", a=count)


def _usage_row(usage: list[int], hw: tuple[int, ...]) -> np.ndarray:
    """(1 + A, H, W, 3) uint8: a blank cell under the start frames, then one bar per action
    whose height is its share of all uses relative to the most used action."""
    h, w = hw
    cells = np.full((1 + len(usage), h, w, 3), 240, dtype=np.uint8)
    cells[0] = 255
    top = max(1, max(usage))
    for a, n in enumerate(usage, start=1):
        bar = round(h * n / top)
        cells[a, h - bar :, w // 4 : w - w // 4] = (214, 39, 40)
    return cells
