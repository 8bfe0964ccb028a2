"""How the shared training driver trains the latent action model: config, data, loss, pictures.

`worldsim train lam --config coinrun [key=value ...]` loads `configs/lam/coinrun.yaml` (over
`defaults.yaml`) into `LAMTrainConfig` and hands a `LAMTask` to `worldsim.train` (the CLI registers
`lam_task`). The LAM trains on frame shards, like the tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from einops import rearrange, repeat
from torch import Tensor

from data_pipeline.loader import Batch, FrameShardBatches, LoaderConfig
from simulator.models.lam import LAMOutput, LatentActionModel
from simulator.models.lam_config import LAMConfig, lam_preset
from worldsim.config import load_config, preset_fields
from worldsim.io.media import to_uint8_clips, write_grid_png
from worldsim.train import TrainConfig

SHEET_CLIPS = 4  # start frames in the pictures


@dataclass
class LAMTrainConfig:
    preset: str = "coinrun"  # model preset in simulator.models.lam_config.PRESETS
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's fields
    data: LoaderConfig = field(default_factory=LoaderConfig)  # training frame shards
    # Held-out shards for evaluation and pictures ("" = none); read in stored order.
    eval_shards: str = ""
    eval_split: str = "test"
    # Steps each latent action is applied for in the action contact sheet: one step of a game
    # moves a sprite by a few pixels, too little to see.
    sheet_steps: int = 4
    train: TrainConfig = field(default_factory=TrainConfig)

    def model_config(self) -> LAMConfig:
        return LAMConfig.from_dict(preset_fields(lam_preset(self.preset), self.model))


class LAMTask(FrameShardBatches):
    """The latent action model's side of `worldsim.train.TrainTask`."""

    cfg: LAMTrainConfig

    def __init__(self, cfg: LAMTrainConfig) -> None:
        if cfg.sheet_steps < 1:
            raise ValueError(f"sheet_steps must be >= 1, got {cfg.sheet_steps}")
        self.cfg = cfg
        self.model_cfg = cfg.model_config()  # fails now, not after the data is opened

    def build_model(self) -> LatentActionModel:
        return LatentActionModel(self.model_cfg)

    def loss(self, model: torch.nn.Module, batch: Batch) -> LAMOutput:
        out: LAMOutput = model(batch.frames)
        return out

    def visualize(self, model: torch.nn.Module, batch: Batch, path_prefix: Path) -> list[Path]:
        """`<prefix>_next.png`: real frames 1..T-1 of the first clips above the LAM's
        predictions of them. `<prefix>_actions.png`: per start frame, the start frame and what
        each latent action does to it (applied `sheet_steps` times)."""
        if not isinstance(model, LatentActionModel):
            raise TypeError(f"expected a LatentActionModel, got {type(model).__name__}")
        frames = batch.frames[:SHEET_CLIPS]
        with torch.no_grad():
            recon = model(frames).recon
            sheet = action_sheet(model, frames[:, 0], self.cfg.sheet_steps)
        next_png = Path(f"{path_prefix}_next.png")
        write_grid_png([*to_uint8_clips(frames[:, 1:]), *to_uint8_clips(recon)], next_png)
        actions_png = Path(f"{path_prefix}_actions.png")
        write_grid_png(list(to_uint8_clips(sheet)), actions_png)
        return [next_png, actions_png]


@torch.no_grad()
def action_sheet(lam: LatentActionModel, start_BCHW: Tensor, steps: int) -> Tensor:
    """(B, 1 + |A|, C, H, W): each start frame, then the frame reached by applying latent action
    a for `steps` decoder steps, for a = 0..|A|-1. The decoder is fed its own predictions, within
    its max_frames - 1 context."""
    b, a = start_BCHW.shape[0], lam.num_actions
    past = repeat(start_BCHW, "b c h w -> (b a) 1 c h w", a=a)
    ids = repeat(torch.arange(a, device=start_BCHW.device), "a -> (b a) 1", b=b)
    for _ in range(steps):
        past = past[:, -(lam.cfg.max_frames - 1) :]
        actions = ids.expand(-1, past.shape[1])
        nxt = lam.decode(past, actions)[:, -1:]
        past = torch.cat([past, nxt], dim=1)
    reached = rearrange(past[:, -1], "(b a) c h w -> b a c h w", a=a)
    return torch.cat([start_BCHW[:, None], reached], dim=1)


def lam_task(preset: str, overrides: list[str]) -> tuple[LAMTask, TrainConfig]:
    """(task, train config) from configs/lam/<preset>.yaml + `key=value` overrides; what
    `worldsim train lam` runs."""
    cfg = load_config(LAMTrainConfig, "lam", preset, overrides)
    return LAMTask(cfg), cfg.train
