"""How the shared training driver trains the inverse-dynamics model (IDM).

`worldsim train idm --config coinrun [key=value ...]` loads `configs/idm/coinrun.yaml` (over
`defaults.yaml`) into `IDMTrainConfig`. With `effects_game` set (e.g. "procgen:coinrun"), the game's
effect classes are measured by playing it before training (a few seconds) and saved in the
model's config, so the groups come from the game, never from a hand-typed table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from data_pipeline.action_effects import measure_action_effects
from data_pipeline.loader import Batch, FrameShardBatches, LoaderConfig
from simulator.evaluation.idm import IDMConfig, IDMOutput, InverseDynamicsModel, idm_preset
from worldsim.config import load_config, preset_fields
from worldsim.train import TrainConfig


@dataclass
class IDMTrainConfig:
    preset: str = "coinrun"  # model preset in simulator.evaluation.idm.PRESETS
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's fields
    data: LoaderConfig = field(default_factory=LoaderConfig)  # training frame shards (actions)
    eval_shards: str = ""  # held-out shards ("" = none)
    eval_split: str = "test"
    effects_game: str = ""  # game whose effect classes to measure ("" = one class per id)
    effects_mode: str = "hard"  # its distribution_mode while measuring
    train: TrainConfig = field(default_factory=TrainConfig)

    def model_config(self) -> IDMConfig:
        base = preset_fields(idm_preset(self.preset), self.model)
        if self.effects_game:
            effects = measure_action_effects(self.effects_game, distribution_mode=self.effects_mode)
            base.update(action_groups=effects.groups, group_names=effects.names)
        return IDMConfig.from_dict(base)


class IDMTask(FrameShardBatches):
    """The IDM's side of `worldsim.train.TrainTask`."""

    cfg: IDMTrainConfig

    def __init__(self, cfg: IDMTrainConfig) -> None:
        self.cfg = cfg
        self.model_cfg = cfg.model_config()  # fails now, not after the data is opened

    def build_model(self) -> InverseDynamicsModel:
        return InverseDynamicsModel(self.model_cfg)

    def loss(self, model: torch.nn.Module, batch: Batch) -> IDMOutput:
        continuous = self.model_cfg.continuous_dim > 0
        if not bool(batch.action_mask.all()) or batch.actions.is_floating_point() != continuous:
            kind = "continuous" if continuous else "discrete"
            raise ValueError(
                f"this IDM trains on clips with {kind} true actions; batch {batch.keys[:3]}... "
                "has clips without them or with the other kind"
            )
        out: IDMOutput = model(batch.frames, batch.actions)
        return out

    def visualize(self, model: torch.nn.Module, batch: Batch, path_prefix: Path) -> list[Path]:
        return []  # its held-out accuracy is the picture: `worldsim eval idm`


def idm_task(preset: str, overrides: list[str]) -> tuple[IDMTask, TrainConfig]:
    """(task, train config) from configs/idm/<preset>.yaml + `key=value` overrides."""
    cfg = load_config(IDMTrainConfig, "idm", preset, overrides)
    return IDMTask(cfg), cfg.train
