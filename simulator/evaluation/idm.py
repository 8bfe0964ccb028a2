"""The inverse-dynamics model (IDM) that scores controllability: given two consecutive frames, it
predicts the true action taken between them, as one of the game's effect classes (action ids the
game treats as one share a class; data_pipeline.action_effects measures them), or, for a world of
continuous controls (`continuous_dim` > 0, CarRacing's steer, gas, brake), their values (a
regression, scored by R² per control).

Trained on real clips with true actions (`worldsim train idm`), its accuracy on held-out real
clips is the ceiling of the controllability score, which applies it to a world's generated
frames under commanded actions (simulator.evaluation.controllability).

References: Baker et al. 2022, "Video PreTraining (VPT)" (an IDM labels actions from frames);
Matrix-Game 2.0 and MineWorld (IDM agreement with the commanded action as controllability).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from data_pipeline.action_effects import group_of
from worldsim.config import build_preset, from_dict
from worldsim.nn.pretrained import PretrainedModel


@dataclass
class IDMConfig:
    image_size: int = 64  # frames are square image_size x image_size
    channels: int = 3
    num_actions: int = 15  # the game's action ids (CoinRun: procgen's 15)
    # Ids the game treats as one, measured (data_pipeline.action_effects); the IDM predicts the
    # group. Empty: every id is its own class.
    action_groups: list[list[int]] = field(default_factory=list)
    group_names: list[str] = field(default_factory=list)  # one per group, for reports
    width: int = 16  # channels after the first conv, doubled at every stride-2 stage
    stages: int = 4  # stride-2 stages: 64x64 -> 4x4
    hidden: int = 256  # MLP width after the spatial features are flattened
    continuous_dim: int = 0  # > 0: regress that many controls (MSE) instead of classifying
    control_names: list[str] = field(default_factory=list)  # one per control, for reports

    @property
    def num_classes(self) -> int:
        return len(self.action_groups) or self.num_actions

    @property
    def outputs(self) -> int:
        return self.continuous_dim or self.num_classes

    def validate(self) -> None:
        problems = []
        if self.image_size % 2**self.stages:
            problems.append(f"image_size {self.image_size} must divide by 2**stages")
        if self.action_groups:
            ids = sorted(a for g in self.action_groups for a in g)
            if ids != list(range(self.num_actions)):
                problems.append(
                    f"action_groups must partition ids 0..{self.num_actions - 1}, got "
                    f"{self.action_groups}"
                )
            if self.group_names and len(self.group_names) != len(self.action_groups):
                problems.append("group_names needs one name per action group")
        if self.control_names and len(self.control_names) != self.continuous_dim:
            problems.append("control_names needs one name per continuous control")
        if min(self.width, self.stages, self.hidden, self.num_actions) < 1:
            problems.append("width, stages, hidden and num_actions must be >= 1")
        if problems:
            raise ValueError("bad IDM config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IDMConfig:
        return from_dict(cls, dict(data), where="IDM config")


PRESETS = {
    "tiny": lambda: IDMConfig(image_size=16, num_actions=3, width=8, stages=2, hidden=16),
    "coinrun": lambda: IDMConfig(),
    "carracing": lambda: IDMConfig(continuous_dim=3, control_names=["steer", "gas", "brake"]),
}


def idm_preset(name: str, **overrides: Any) -> IDMConfig:
    return build_preset(PRESETS, name, "inverse dynamics model", overrides)


@dataclass
class IDMOutput:
    loss: Tensor  # scalar cross-entropy over the effect classes (or MSE of the controls)
    metrics: dict[str, Tensor]  # detached scalars: accuracy (or R² of each control)
    logits: Tensor  # (N, num_classes) of the N transitions (or (N, D) controls), detached


class InverseDynamicsModel(PretrainedModel):
    """(frame t, frame t+1) -> logits over effect classes. `forward(frames, actions)` is the
    training loss over every transition of the clips; `predict` is the inference API."""

    def __init__(self, cfg: IDMConfig | Mapping[str, Any]) -> None:
        super().__init__()
        cfg = cfg if isinstance(cfg, IDMConfig) else IDMConfig.from_dict(dict(cfg))
        cfg.validate()
        self.register_to_config(cfg=asdict(cfg))
        self.cfg = cfg
        layers: list[nn.Module] = [nn.Conv2d(3 * cfg.channels, cfg.width, 3, padding=1), nn.GELU()]
        c = cfg.width
        for _ in range(cfg.stages):
            layers += [nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), nn.GroupNorm(8, 2 * c)]
            layers += [nn.GELU()]
            c *= 2
        self.features = nn.Sequential(*layers)
        side = cfg.image_size // 2**cfg.stages
        # Flattened, not pooled: where things moved (the player, or the scrolled level) matters.
        self.head = nn.Sequential(
            nn.Linear(c * side * side, cfg.hidden),
            nn.GELU(),
            nn.Linear(cfg.hidden, cfg.outputs),
        )
        classes = group_of(cfg.action_groups, cfg.num_actions)
        self.class_of: Tensor
        self.register_buffer("class_of", torch.tensor(classes), persistent=False)

    def classes(self, actions: Tensor) -> Tensor:
        """Action ids (any shape) -> their effect classes."""
        return self.class_of.to(actions.device)[actions]

    def predict(self, prev_BCHW: Tensor, next_BCHW: Tensor) -> Tensor:
        """Logits (B, num_classes) of the action between two frames in [-1, 1], or the
        controls (B, D) of a continuous IDM."""
        x = torch.cat([prev_BCHW, next_BCHW, next_BCHW - prev_BCHW], dim=1)
        return self.head(self.features(x).flatten(1))

    def forward(self, frames_BTCHW: Tensor, actions_BT: Tensor) -> IDMOutput:
        """Loss over every transition t -> t+1 of the clips; actions[t] leads to frame t+1."""
        prev = rearrange(frames_BTCHW[:, :-1], "b t c h w -> (b t) c h w")
        nxt = rearrange(frames_BTCHW[:, 1:], "b t c h w -> (b t) c h w")
        logits = self.predict(prev, nxt)
        if self.cfg.continuous_dim:
            target_ND = actions_BT[:, :-1].reshape(-1, self.cfg.continuous_dim).float()
            loss = F.mse_loss(logits, target_ND)
            names = self.cfg.control_names or [str(i) for i in range(self.cfg.continuous_dim)]
            r2 = r_squared(logits.detach(), target_ND)
            return IDMOutput(loss, {f"r2_{n}": v for n, v in zip(names, r2, strict=True)}, logits)
        target = self.classes(actions_BT[:, :-1].reshape(-1))
        loss = F.cross_entropy(logits, target)
        accuracy = (logits.argmax(-1) == target).float().mean()
        return IDMOutput(loss, {"accuracy": accuracy.detach()}, logits.detach())


def r_squared(predicted_ND: Tensor, target_ND: Tensor) -> Tensor:
    """R² of each of D controls: 1 - residual / total variance (1 perfect, 0 the mean's guess,
    negative worse than it)."""
    residual = (predicted_ND - target_ND).pow(2).sum(0)
    total = (target_ND - target_ND.mean(0)).pow(2).sum(0).clamp_min(1e-12)
    return 1 - residual / total
