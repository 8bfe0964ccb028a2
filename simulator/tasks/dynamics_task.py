"""How the shared training driver trains the dynamics model: config, token data, loss, pictures.

`dynamics_task("coinrun", ["train.steps=100"])` loads `configs/dynamics/coinrun.yaml` (over
`defaults.yaml`) into `DynamicsTrainConfig` and returns a `DynamicsTask` for `worldsim.train`.
Training reads token shards (`worldsim data tokenize`), never frames; the shards' tokenizer and
LAM must match the model config, which is checked before the first step.

Pictures: training sees tokens only, so they show token maps (each code its own colour): the
real clip, the model's one-step prediction of every frame from the real frames before it, and
where the two differ. `worldsim eval` renders decoded frames.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange, repeat

from data_pipeline.action_effects import group_of, measure_action_effects
from data_pipeline.token_shards import TokenBatch, TokenIdentity, TokenLoader, TokenLoaderConfig
from simulator.models.dynamics import ActionInputs, DynamicsModel, DynamicsOutput
from simulator.models.dynamics_config import DynamicsConfig, dynamics_preset
from worldsim.config import load_config, preset_fields
from worldsim.io.media import write_grid_png
from worldsim.train import TrainConfig

PICTURE_CLIPS = 2  # clips drawn per evaluation; each costs T - 1 forward passes of one clip
PICTURE_SCALE = 4  # pixels per token side, so a 16x16 map is drawn 64x64


@dataclass
class DynamicsTrainConfig:
    preset: str = "coinrun"  # model preset in simulator.models.dynamics_config.PRESETS
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's fields
    data: TokenLoaderConfig = field(default_factory=TokenLoaderConfig)  # training token shards
    # Held-out token shards for evaluation and pictures ("" = none); read in stored order.
    eval_shards: str = ""
    eval_split: str = "test"
    # Steer by the game's effect classes instead of its ids ("" = by its ids): the classes are
    # measured by playing the game (data_pipeline.action_effects, a few seconds) and become the
    # model's discrete actions; the shards' true ids are mapped to them.
    effects_game: str = ""
    effects_mode: str = "hard"  # its distribution_mode while measuring
    train: TrainConfig = field(default_factory=TrainConfig)

    def model_config(self) -> DynamicsConfig:
        base = preset_fields(dynamics_preset(self.preset), self.model)
        if self.effects_game:
            effects = measure_action_effects(self.effects_game, distribution_mode=self.effects_mode)
            base.update(
                num_discrete_actions=len(effects.groups),
                action_groups=effects.groups,
                action_names=effects.names,
            )
        return DynamicsConfig.from_dict(base)


def batch_actions(batch: TokenBatch, cfg: DynamicsConfig) -> ActionInputs:
    """The action inputs a model needs from a token batch (true ids mapped to the model's
    effect classes when it has them)."""
    sources = cfg.action_sources
    true_sources = [s for s in sources if s in ("discrete", "continuous")]
    if true_sources and not bool(batch.action_mask.all()):
        known = batch.action_mask.tolist()
        missing = [k for k, has in zip(batch.keys, known, strict=True) if not has]
        raise ValueError(
            f"the dynamics conditions on true actions {true_sources} but clips {missing[:4]} "
            "have none"
        )
    if "latent" in sources and batch.latent_actions is None:
        raise ValueError(
            "the dynamics conditions on latent actions but the token shards hold none: "
            "tokenize them with a latent action model"
        )
    discrete = None
    if "discrete" in sources:
        discrete = batch.actions
        if cfg.action_groups:
            n = sum(len(g) for g in cfg.action_groups)
            discrete = torch.tensor(group_of(cfg.action_groups, n), device=discrete.device)[
                discrete
            ]
    return ActionInputs(
        latent=batch.latent_actions if "latent" in sources else None,
        discrete=discrete,
        continuous=batch.actions if "continuous" in sources else None,
    )


def check_token_identity(model_cfg: DynamicsConfig, ident: TokenIdentity, where: str) -> None:
    """ValueError naming every mismatch between a model config and the shards' models."""
    problems = []
    if ident.num_codes != model_cfg.num_codes:
        problems.append(
            f"tokenizer has {ident.num_codes} codes but the model's num_codes is "
            f"{model_cfg.num_codes}"
        )
    if ident.grid != model_cfg.grid:
        problems.append(f"token grid is {ident.grid} but the model's grid is {model_cfg.grid}")
    if "latent" in model_cfg.action_sources and ident.num_actions is None:
        problems.append("the shards hold no latent actions but the model conditions on them")
    elif "latent" in model_cfg.action_sources and ident.num_actions != model_cfg.num_latent_actions:
        problems.append(
            f"LAM has {ident.num_actions} actions but the model's num_latent_actions is "
            f"{model_cfg.num_latent_actions}"
        )
    if problems:
        raise ValueError(f"token shards {where} do not fit the model: " + "; ".join(problems))


class DynamicsTask:
    """The dynamics model's side of `worldsim.train.TrainTask`."""

    def __init__(self, cfg: DynamicsTrainConfig) -> None:
        self.cfg = cfg
        self.model_cfg = cfg.model_config()  # fails now, not after the data is opened

    def build_model(self) -> DynamicsModel:
        return DynamicsModel(self.model_cfg)

    def train_batches(self, batch_size: int, rank: int, world_size: int, seed: int) -> TokenLoader:
        data = dataclasses.replace(self.cfg.data, batch_size=batch_size, seed=seed)
        loader = TokenLoader(data, rank=rank, world_size=world_size)
        check_token_identity(self.model_cfg, loader.token_identity, str(data.shards))
        return loader

    def eval_batches(self, batch_size: int) -> TokenLoader | None:
        if not self.cfg.eval_shards:
            return None
        data = self.cfg.data.for_eval(self.cfg.eval_shards, self.cfg.eval_split, batch_size)
        loader = TokenLoader(data, rank=0, world_size=1)
        check_token_identity(self.model_cfg, loader.token_identity, str(data.shards))
        return loader

    def loss(self, model: torch.nn.Module, batch: TokenBatch) -> DynamicsOutput:
        out: DynamicsOutput = model(batch.tokens, batch_actions(batch, self.model_cfg))
        return out

    def visualize(self, model: torch.nn.Module, batch: TokenBatch, path_prefix: Path) -> list[Path]:
        """Token maps, three rows per clip: real, one-step predicted, wrong tokens in white."""
        assert isinstance(model, DynamicsModel)
        n = min(PICTURE_CLIPS, batch.tokens.shape[0])
        actions = batch_actions(batch, self.model_cfg)
        palette = token_palette(self.model_cfg.num_codes)
        rows = []
        with torch.no_grad():
            for i in range(n):
                real_Thw = batch.tokens[i]
                pred_Thw = one_step_predictions(model, real_Thw, actions, i)
                wrong = (pred_Thw != real_Thw).cpu().numpy()
                rows += [palette[real_Thw.cpu().numpy()], palette[pred_Thw.cpu().numpy()]]
                rows.append(repeat(wrong.astype(np.uint8) * 255, "t h w -> t h w c", c=3))
        rows = [r.repeat(PICTURE_SCALE, axis=1).repeat(PICTURE_SCALE, axis=2) for r in rows]
        return [write_grid_png(rows, Path(f"{path_prefix}_tokens.png"))]


def one_step_predictions(
    model: DynamicsModel, tokens_Thw: torch.Tensor, actions: ActionInputs, clip: int
) -> torch.Tensor:
    """(T, h, w): frame 0 as given, and each frame t >= 1 as the most likely code of every token
    when frame t is fully masked and frames < t are real (one MaskGIT step, teacher-forced).

    Frame t's logits depend only on frames <= t, so copy t - 1 of the clip, with frames >= t
    masked, yields frame t: one forward pass of T - 1 copies."""
    t = tokens_Thw.shape[0]
    copies_CThw = repeat(tokens_Thw, "t h w -> c t h w", c=t - 1)
    frame_idx = torch.arange(t, device=tokens_Thw.device)
    target_C = torch.arange(1, t, device=tokens_Thw.device)
    mask_CT = frame_idx[None, :] >= target_C[:, None]
    mask_CThw = repeat(mask_CT, "c t -> c t h w", h=tokens_Thw.shape[1], w=tokens_Thw.shape[2])
    clip_actions = ActionInputs(
        *(
            None if a is None else repeat(a[clip], "... -> c ...", c=t - 1)
            for a in actions.as_tuple()
        )
    )
    hidden_CTND = model.transform(model.embed(copies_CThw, mask_CThw, clip_actions))
    hidden_CND = hidden_CTND[torch.arange(t - 1), target_C]
    pred_Chw = rearrange(model.head(hidden_CND).argmax(-1), "c (h w) -> c h w", h=model.grid)
    return torch.cat([tokens_Thw[:1], pred_Chw], dim=0)


def token_palette(num_codes: int) -> np.ndarray:
    """(num_codes, 3) uint8: a fixed random colour per code, the same in every picture."""
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (num_codes, 3), generator=gen, dtype=torch.uint8).numpy()


def dynamics_task(preset: str, overrides: list[str]) -> tuple[DynamicsTask, TrainConfig]:
    """(task, train options) from configs/dynamics/<preset>.yaml + key=value overrides; the
    CLI registers this as TRAIN_TASKS["dynamics"]."""
    cfg = load_config(DynamicsTrainConfig, "dynamics", preset, overrides)
    return DynamicsTask(cfg), cfg.train
