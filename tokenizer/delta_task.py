"""How the shared training driver trains the delta tokenizer: config, data, loss and pictures.

`worldsim train delta --config coinrun [key=value ...]` loads `configs/delta/coinrun.yaml` (over
`defaults.yaml`) into `DeltaTrainConfig` and hands a `DeltaTask` to `worldsim.train`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from data_pipeline.loader import Batch, FrameShardBatches, LoaderConfig
from tokenizer.delta import DeltaTokenizer
from tokenizer.delta_config import DeltaTokenizerConfig, delta_tokenizer_preset
from tokenizer.model import TokenizerOutput
from worldsim.config import preset_fields
from worldsim.io.media import to_uint8_clips, write_grid_png, write_side_by_side_mp4
from worldsim.train import TrainConfig


@dataclass
class DeltaTrainConfig:
    preset: str = "coinrun"  # model preset in tokenizer.delta_config.PRESETS
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's fields
    data: LoaderConfig = field(default_factory=LoaderConfig)  # training shards
    eval_shards: str = ""  # held-out shards ("" = none); read in stored order
    eval_split: str = "test"
    # Share of training clips rendered from the renderer's own previous frames, as the engine
    # renders (DeltaTokenizer.loss); evaluation always renders closed-loop, the world's way.
    closed_loop: float = 0.5
    # Backpropagate through the renderer's own frames (DeltaTokenizer.loss): measured to keep
    # rollouts sharp where detached closed-loop training lets them blur (RECIPE, rung 4).
    through_time: bool = False
    # Weight of the pixels that change between real frames in the loss (DeltaTokenizer.loss):
    # the few pixels a key changes (a sprite turning) must not drown in the still background.
    change_weight: float = 1.0
    # Share of training clips replaced by their first frame held still: the renderer learns
    # that "no change" tokens give back the frame it was shown (run on its own renders a still
    # scene otherwise drifts, and pale levels dissolve within 20 steps).
    still_clips: float = 0.0
    # Train only the renderer (DeltaTokenizer.freeze_tokens): a fine-tune that keeps the tokens,
    # so a world's dynamics model needs no retraining. Start it with train.init_from.
    renderer_only: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)

    def model_config(self) -> DeltaTokenizerConfig:
        return DeltaTokenizerConfig.from_dict(
            preset_fields(delta_tokenizer_preset(self.preset), self.model)
        )


class DeltaTask(FrameShardBatches):
    """The delta tokenizer's side of `worldsim.train.TrainTask`."""

    cfg: DeltaTrainConfig

    def __init__(self, cfg: DeltaTrainConfig) -> None:
        self.cfg = cfg
        self.model_cfg = cfg.model_config()  # fails now, not after the data is opened
        if not 0 <= cfg.closed_loop <= 1:
            raise ValueError(f"closed_loop must be in [0, 1], got {cfg.closed_loop}")
        if not 0 <= cfg.still_clips <= 1:
            raise ValueError(f"still_clips must be in [0, 1], got {cfg.still_clips}")
        if cfg.change_weight < 1:
            raise ValueError(f"change_weight must be >= 1, got {cfg.change_weight}")

    def build_model(self) -> DeltaTokenizer:
        model = DeltaTokenizer(self.model_cfg)
        if self.cfg.renderer_only:
            model.freeze_tokens()
        return model

    def loss(self, model: torch.nn.Module, batch: Batch) -> TokenizerOutput:
        frames, actions, closed_loop = batch.frames, self._controls(batch), 1.0
        if model.training:
            closed_loop = self.cfg.closed_loop
            still_B = torch.rand(frames.shape[0], device=frames.device) < self.cfg.still_clips
            frames = torch.where(still_B.view(-1, 1, 1, 1, 1), frames[:, :1], frames)
            if actions is not None:  # a still scene is told no controls
                actions = torch.where(still_B.view(-1, 1, 1), 0.0, actions)
        out: TokenizerOutput = model(
            frames, actions, closed_loop=closed_loop, through_time=self.cfg.through_time,
            change_weight=self.cfg.change_weight,
        )  # fmt: skip
        return out

    def _controls(self, batch: Batch) -> torch.Tensor | None:
        """The batch's continuous actions for a renderer told controls, else None."""
        if not self.model_cfg.action_dim:
            return None
        if not bool(batch.action_mask.all()) or not batch.actions.is_floating_point():
            raise ValueError(
                f"this delta tokenizer reads {self.model_cfg.action_dim} controls a frame, but "
                f"batch {batch.keys[:3]}... holds clips without continuous actions"
            )
        return batch.actions

    def visualize(self, model: torch.nn.Module, batch: Batch, path_prefix: Path) -> list[Path]:
        """Real clips above their closed-loop renders (PNG) and side by side (mp4), 4 clips."""
        actions = self._controls(batch)
        with torch.no_grad():
            recon = model(
                batch.frames[:4], None if actions is None else actions[:4], closed_loop=1.0
            ).recon
        real, fake = to_uint8_clips(batch.frames[:4]), to_uint8_clips(recon)
        png, mp4 = Path(f"{path_prefix}_recon.png"), Path(f"{path_prefix}_recon.mp4")
        write_grid_png([*real, *fake], png)
        write_side_by_side_mp4([real[0], fake[0]], mp4, scale=4)
        return [png, mp4]
