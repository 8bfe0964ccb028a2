"""Configuration of the MaskGIT dynamics model and its named presets.

Presets: `tiny` (tests, matches the tiny tokenizer: 125 codes on a 4x4 grid), `coinrun` (64x64
CoinRun, 16x16 tokens, sized for about 75 minutes on a 2-core CPU), `base` and `large` (GPU;
`large` follows Genie's CoinRun case study).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worldsim.config import build_preset, from_dict

ACTION_SOURCES = ("latent", "discrete", "continuous")


@dataclass
class DynamicsConfig:
    # Must equal the tokenizer's codebook size and token grid (check_compatible verifies it).
    num_codes: int = 1000
    grid: int = 16  # tokens per side of a frame
    max_frames: int = 16  # length of the learned temporal position table (Genie's clip length)
    width: int = 256
    depth: int = 6
    num_heads: int = 8
    mlp_ratio: float = 4.0
    qk_norm: bool = True  # Genie uses QK-norm; it keeps attention logits bounded at lr 1e-3
    attention: str = "auto"  # backend name, see worldsim.nn.attention.ATTENTION_BACKENDS
    # What conditions frame t+1 besides the past: any of ACTION_SOURCES, embeddings summed.
    action_sources: list[str] = field(default_factory=lambda: ["latent"])
    num_latent_actions: int = 8  # the LAM's codebook size (Genie uses 8)
    num_discrete_actions: int = 15  # procgen's full action set
    # What the discrete actions stand for, when they are a game's effect classes rather than its
    # ids (data_pipeline.action_effects): the game ids of each action, and its name. Set by the
    # training task from `effects_game`; `worldsim pack` copies them into world.json.
    action_groups: list[list[int]] = field(default_factory=list)
    action_names: list[str] = field(default_factory=list)
    continuous_dim: int = 0  # width of continuous actions; required >= 1 with "continuous"
    # Per-clip mask rate r ~ U(mask_rate_min, mask_rate_max) (Genie: U(0.5, 1)).
    mask_rate_min: float = 0.5
    mask_rate_max: float = 1.0
    # Per-clip rate c ~ U(0, corrupt_max) of unmasked context tokens replaced by random codes,
    # so the model learns to tolerate its own sampling errors in rollouts (1X GENIE's random
    # replacement, GameNGen's context noise). Training only; 0 disables.
    corrupt_max: float = 0.1
    # Per clip, the chance that its context is the model's own guess instead of the real tokens
    # (scheduled sampling): a no-grad pass under a fresh training mask draws every masked token
    # at temperature 1, and the draws replace the real tokens the loss pass leaves unmasked.
    # Rollouts feed the model its own frames, whose motion is weaker and noisier than the real
    # clips'; trained on such context it learns to keep following the keys from it. Training
    # only, one more forward pass a step; 0 disables.
    scheduled_sampling: float = 0.0
    # Loss weight of a masked token whose code differs from the previous frame's, relative to one
    # that repeats it. On CoinRun most tokens repeat, and a model that copies the past scores well
    # while ignoring the keys; weighting the changes pushes it to model motion. 1: plain mean.
    changed_weight: float = 1.0
    # Per clip and per action source, the chance that the source is hidden in training (its
    # embedding dropped). With it, a model on ["latent", "discrete"] can later be steered by
    # either source alone or by both: one model serves Genie's latent-action evaluation and
    # rollouts with true actions. 0: every configured source is required.
    source_dropout: float = 0.0
    # Per frame, the chance that the actions leading into it are hidden in training (every
    # source's embedding dropped for that frame only). It teaches the unconditional prediction,
    # given the past and its actions, that classifier-free guidance on the actions contrasts
    # against (SamplingConfig.guidance). 0: the model cannot be guided.
    action_dropout: float = 0.0
    # The tokenizer's FSQ levels, when its codes are FSQ digits: each token is then also embedded
    # from its digits (a linear map of the code vector), so codes one digit apart start close,
    # as GenieRedux-G and tinyworlds feed FSQ coordinates. Empty: id embeddings only.
    code_levels: list[int] = field(default_factory=list)
    gradient_checkpointing: bool = False  # recompute block activations in backward (memory)

    @property
    def guidable(self) -> bool:
        """Whether the model learned the action-free prediction that guidance contrasts against."""
        return self.action_dropout > 0

    def check_guidance(self, guidance: float) -> None:
        """ValueError when sampling at `guidance` (1: off) needs training this model lacks."""
        if guidance != 1 and not self.guidable:
            raise ValueError(
                f"guidance {guidance} needs a dynamics model trained with action_dropout > 0 (it "
                "learns the action-free prediction guidance contrasts against); this one was not "
                "trained for key guidance: sample with guidance 1"
            )

    @property
    def mask_id(self) -> int:
        """Input id of a masked token: one past the codebook."""
        return self.num_codes

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DynamicsConfig:
        cfg = from_dict(cls, data, where="dynamics config")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ValueError naming every inconsistent option. Unknown `attention` names are
        reported by the backend registry when the model is built."""
        positive = ("num_codes", "grid", "max_frames", "width", "depth", "num_heads")
        problems = [
            f"{n} must be >= 1, got {getattr(self, n)}" for n in positive if getattr(self, n) < 1
        ]
        if self.num_codes < 2:
            problems.append(f"num_codes must be >= 2, got {self.num_codes}")
        if self.max_frames < 2:
            problems.append(f"max_frames must be >= 2 (context + next), got {self.max_frames}")
        if self.width % self.num_heads:
            problems.append(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        problems += self._action_problems()
        if not 0 < self.mask_rate_min <= self.mask_rate_max <= 1:
            problems.append(
                "need 0 < mask_rate_min <= mask_rate_max <= 1, got "
                f"{self.mask_rate_min}, {self.mask_rate_max}"
            )
        if not 0 <= self.source_dropout < 1:
            problems.append(f"source_dropout must be in [0, 1), got {self.source_dropout}")
        if not self.changed_weight > 0:
            problems.append(f"changed_weight must be > 0, got {self.changed_weight}")
        if not 0 <= self.action_dropout < 1:
            problems.append(f"action_dropout must be in [0, 1), got {self.action_dropout}")
        if not 0 <= self.scheduled_sampling <= 1:
            problems.append(f"scheduled_sampling must be in [0, 1], got {self.scheduled_sampling}")
        if not 0 <= self.corrupt_max < 1:
            problems.append(f"corrupt_max must be in [0, 1), got {self.corrupt_max}")
        if self.code_levels and math.prod(self.code_levels) != self.num_codes:
            problems.append(
                f"code_levels {self.code_levels} give {math.prod(self.code_levels)} codes, "
                f"not num_codes={self.num_codes}"
            )
        if problems:
            raise ValueError("bad dynamics config: " + "; ".join(problems))

    def _action_problems(self) -> list[str]:
        out = []
        unknown = sorted(set(self.action_sources) - set(ACTION_SOURCES))
        if unknown:
            out.append(f"unknown action_sources {unknown}; choose from {list(ACTION_SOURCES)}")
        if len(set(self.action_sources)) != len(self.action_sources):
            out.append(f"action_sources lists a source twice: {self.action_sources}")
        if "latent" in self.action_sources and self.num_latent_actions < 1:
            out.append(f"num_latent_actions must be >= 1, got {self.num_latent_actions}")
        if "discrete" in self.action_sources and self.num_discrete_actions < 1:
            out.append(f"num_discrete_actions must be >= 1, got {self.num_discrete_actions}")
        if self.action_groups and len(self.action_groups) != self.num_discrete_actions:
            out.append(
                f"action_groups has {len(self.action_groups)} groups for "
                f"{self.num_discrete_actions} discrete actions"
            )
        if self.action_names and len(self.action_names) != self.num_discrete_actions:
            out.append(f"action_names needs {self.num_discrete_actions} names")
        if "continuous" in self.action_sources and self.continuous_dim < 1:
            out.append(
                f"continuous_dim must be >= 1 with continuous actions, got {self.continuous_dim}"
            )
        return out


def _tiny() -> DynamicsConfig:
    # The tiny tokenizer: FSQ levels [5, 5, 5] = 125 codes, 16x16 frames / patch 4 = 4x4 tokens.
    return DynamicsConfig(
        num_codes=125,
        grid=4,
        max_frames=8,
        width=32,
        depth=2,
        num_heads=2,
        mlp_ratio=2.0,
        num_latent_actions=4,
    )


def _coinrun() -> DynamicsConfig:
    # Sized for ~3600 steps of 2 clips in 75 CPU-minutes (configs/dynamics/coinrun.yaml): a step
    # costs about 1.1x a coinrun tokenizer step; width 192 costs 2x, so half the steps. On CPU
    # more steps beat more width (the tokenizer's finding), so blocks stay few and MLPs narrow.
    return DynamicsConfig(width=128, depth=4, num_heads=4, mlp_ratio=2.0)


def _base() -> DynamicsConfig:
    return DynamicsConfig(width=384, depth=8, num_heads=6)


def _large() -> DynamicsConfig:
    # Genie's CoinRun case study (Bruce et al. 2024, appendix): 12 layers of width 512, 8 heads,
    # over a 1024-code VQ tokenizer and 6 latent actions (the `large` tokenizer and LAM presets).
    return DynamicsConfig(num_codes=1024, width=512, depth=12, num_heads=8, num_latent_actions=6)


PRESETS: dict[str, Callable[[], DynamicsConfig]] = {
    "tiny": _tiny,
    "coinrun": _coinrun,
    "base": _base,
    "large": _large,
}


def dynamics_preset(name: str, **overrides: Any) -> DynamicsConfig:
    """A fresh copy of preset `name` with top-level fields replaced by `overrides`."""
    return build_preset(PRESETS, name, "dynamics", overrides)
