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

    def build_model(self) -> DeltaTokenizer:
        return DeltaTokenizer(self.model_cfg)

    def loss(self, model: torch.nn.Module, batch: Batch) -> TokenizerOutput:
        out: TokenizerOutput = model(
            batch.frames, closed_loop=self.cfg.closed_loop if model.training else 1.0
        )
        return out

    def visualize(self, model: torch.nn.Module, batch: Batch, path_prefix: Path) -> list[Path]:
        """Real clips above their closed-loop renders (PNG) and side by side (mp4), 4 clips."""
        with torch.no_grad():
            recon = model(batch.frames[:4], closed_loop=1.0).recon
        real, fake = to_uint8_clips(batch.frames[:4]), to_uint8_clips(recon)
        png, mp4 = Path(f"{path_prefix}_recon.png"), Path(f"{path_prefix}_recon.mp4")
        write_grid_png([*real, *fake], png)
        write_side_by_side_mp4([real[0], fake[0]], mp4, scale=4)
        return [png, mp4]
