"""How the shared training driver trains the tokenizer: config, data, loss and pictures.

`worldsim train tokenizer --config coinrun [key=value ...]` loads `configs/tokenizer/coinrun.yaml`
(over `defaults.yaml`) into `TokenizerTrainConfig` and hands a `TokenizerTask` to `worldsim.train`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from data_pipeline.loader import Batch, FrameShardBatches, LoaderConfig
from tokenizer.config import TokenizerConfig, tokenizer_preset
from tokenizer.model import TokenizerOutput, VideoTokenizer
from worldsim.config import preset_fields
from worldsim.io.media import to_uint8_clips, write_grid_png, write_side_by_side_mp4
from worldsim.train import TrainConfig


@dataclass
class AugmentConfig:
    """Per-clip augmentations of training clips (never of evaluation clips). With few real clips,
    colours and layouts absent from training come out as the textures of the nearest codes: a
    flat grey road decoded at 19.5 dB where a bicubic thumbnail scores 35 dB, and low-contrast
    grey or dark clips decoded with a blue tint. Photometric jitter shows the model such clips.
    Each jitter factor is drawn per clip, uniformly from its [low, high] range."""

    grayscale_prob: float = 0.0  # share of clips shown in grey (ITU-R BT.601 luma)
    hflip_prob: float = 0.0  # share of clips mirrored left-right
    jitter_prob: float = 0.0  # share of clips that get the three jitters below
    saturation: list[float] = field(default_factory=lambda: [1.0, 1.0])  # 0 grey, 1 unchanged
    contrast: list[float] = field(default_factory=lambda: [1.0, 1.0])  # scale about clip mean
    brightness: list[float] = field(default_factory=lambda: [0.0, 0.0])  # added, pixels in [-1, 1]

    def validate(self) -> None:
        for name in ("grayscale_prob", "hflip_prob", "jitter_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"augment.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("saturation", "contrast", "brightness"):
            value = getattr(self, name)
            if len(value) != 2 or value[0] > value[1]:
                raise ValueError(f"augment.{name} must be a [low, high] range, got {value}")
        if self.saturation[0] < 0 or self.contrast[0] < 0:
            raise ValueError("augment.saturation and augment.contrast must be >= 0")

    def apply(self, frames_BTCHW: torch.Tensor) -> torch.Tensor:
        b = frames_BTCHW.shape[0]
        if self.grayscale_prob > 0 and frames_BTCHW.shape[2] == 3:
            pick = self._pick(b, self.grayscale_prob, frames_BTCHW.device)
            frames_BTCHW = torch.where(pick, _luma(frames_BTCHW), frames_BTCHW)
        if self.jitter_prob > 0:
            pick = self._pick(b, self.jitter_prob, frames_BTCHW.device)
            frames_BTCHW = torch.where(pick, self._jitter(frames_BTCHW), frames_BTCHW)
        if self.hflip_prob > 0:
            pick = self._pick(b, self.hflip_prob, frames_BTCHW.device)
            frames_BTCHW = torch.where(pick, frames_BTCHW.flip(-1), frames_BTCHW)
        return frames_BTCHW

    @staticmethod
    def _pick(b: int, prob: float, device: torch.device) -> torch.Tensor:
        """(B, 1, 1, 1, 1) bools, True for about `prob` of the clips."""
        return (torch.rand(b, device=device) < prob).view(b, 1, 1, 1, 1)

    def _jitter(self, frames_BTCHW: torch.Tensor) -> torch.Tensor:
        def draw(bounds: list[float]) -> torch.Tensor:
            low, high = bounds
            u = torch.rand(frames_BTCHW.shape[0], 1, 1, 1, 1, device=frames_BTCHW.device)
            return low + (high - low) * u

        out = frames_BTCHW
        if out.shape[2] == 3:
            out = torch.lerp(_luma(out), out, draw(self.saturation))
        mean = out.mean(dim=(1, 2, 3, 4), keepdim=True)
        out = mean + (out - mean) * draw(self.contrast) + draw(self.brightness)
        return out.clamp(-1, 1)


def _luma(frames_BTCHW: torch.Tensor) -> torch.Tensor:
    """RGB clips in grey (ITU-R BT.601 luma), still with 3 channels."""
    weights = frames_BTCHW.new_tensor([0.299, 0.587, 0.114]).view(1, 1, 3, 1, 1)
    return (frames_BTCHW * weights).sum(2, keepdim=True).expand_as(frames_BTCHW)


@dataclass
class TokenizerTrainConfig:
    preset: str = "coinrun"  # model preset in tokenizer.config.PRESETS
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's fields
    data: LoaderConfig = field(default_factory=LoaderConfig)  # training shards
    # Held-out shards for evaluation and pictures ("" = none); read in stored order.
    eval_shards: str = ""
    eval_split: str = "test"
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # training clips only
    # Train only the decoder side (VideoTokenizer.freeze_tokens): a fine-tune that keeps the
    # tokens, so a world's dynamics model needs no retraining. Start it with train.init_from.
    decoder_only: bool = False
    # With decoder_only: the most of a training clip's tokens replaced by random codes
    # (VideoTokenizer.loss); teaches the decoder to render a dynamics model's imperfect tokens.
    token_noise: float = 0.0
    train: TrainConfig = field(default_factory=TrainConfig)

    def model_config(self) -> TokenizerConfig:
        return TokenizerConfig.from_dict(preset_fields(tokenizer_preset(self.preset), self.model))


class TokenizerTask(FrameShardBatches):
    """The tokenizer's side of `worldsim.train.TrainTask`."""

    cfg: TokenizerTrainConfig

    def __init__(self, cfg: TokenizerTrainConfig) -> None:
        self.cfg = cfg
        self.model_cfg = cfg.model_config()  # fails now, not after the data is opened
        cfg.augment.validate()
        if not 0 <= cfg.token_noise <= 1:
            raise ValueError(f"token_noise must be in [0, 1], got {cfg.token_noise}")
        if cfg.token_noise and not cfg.decoder_only:
            raise ValueError("token_noise needs decoder_only: true (it trains the decoder alone)")

    def build_model(self) -> VideoTokenizer:
        model = VideoTokenizer(self.model_cfg)
        if self.cfg.decoder_only:
            model.freeze_tokens()
        return model

    def loss(self, model: torch.nn.Module, batch: Batch) -> TokenizerOutput:
        frames, noise = batch.frames, 0.0  # evaluation sees clean clips and tokens
        if model.training:
            frames, noise = self.cfg.augment.apply(frames), self.cfg.token_noise
        out: TokenizerOutput = model(frames, token_noise=noise)
        return out

    def visualize(self, model: torch.nn.Module, batch: Batch, path_prefix: Path) -> list[Path]:
        """Originals above reconstructions (PNG) and side by side (mp4), first 4 clips."""
        with torch.no_grad():
            recon = model(batch.frames[:4]).recon
        real = to_uint8_clips(batch.frames[:4])
        fake = to_uint8_clips(recon)
        png = Path(f"{path_prefix}_recon.png")
        mp4 = Path(f"{path_prefix}_recon.mp4")
        write_grid_png([*real, *fake], png)
        write_side_by_side_mp4([real[0], fake[0]], mp4, scale=4)
        return [png, mp4]
