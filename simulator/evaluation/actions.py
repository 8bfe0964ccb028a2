"""Which actions an evaluation can steer with: the dynamics model's action inputs, the names of
the curves they feed, and the seeding that keeps the sampler's randomness identical across them
(Genie's ΔtPSNR compares rollouts with identical samplers and seeds).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from simulator.models.dynamics import DynamicsModel

# Curves of a world's evaluation: the ceiling, the do-nothing baseline, and the action streams.
TOKENIZER, COPY = "tokenizer", "copy_first_frame"
# The clip's true actions, and random ones: uniform ids, or the next clip's continuous controls.
TRUE, RANDOM_TRUE = "true_actions", "random_true_actions"
LAM, RANDOM_LATENT = "lam_actions", "random_latent_actions"  # LAM-read, and uniform latent ids


@dataclass
class Conditioning:
    """Which action inputs a dynamics model takes, and their sizes."""

    latent: int | None  # number of latent actions, None if not conditioned on them
    discrete: int | None  # number of true discrete actions
    continuous: int | None  # width of true continuous actions
    # Trained with source dropout: each source may be left out, so latent-action and
    # true-action rollouts both run, each with its own source alone.
    separable: bool = False

    @classmethod
    def of(cls, dynamics: DynamicsModel) -> Conditioning:
        cfg = dynamics.cfg
        return cls(
            latent=cfg.num_latent_actions if "latent" in cfg.action_sources else None,
            discrete=cfg.num_discrete_actions if "discrete" in cfg.action_sources else None,
            continuous=cfg.continuous_dim if "continuous" in cfg.action_sources else None,
            separable=cfg.source_dropout > 0,
        )

    @property
    def names(self) -> list[str]:
        sizes = {"latent": self.latent, "discrete": self.discrete, "continuous": self.continuous}
        return [name for name, size in sizes.items() if size is not None]

    @property
    def true(self) -> bool:
        return self.discrete is not None or self.continuous is not None


SAMPLER, ACTION_DRAW = 0, 1  # generator streams of one batch


def generator_for(
    seed: int, batch_index: int, device: str | torch.device, stream: int = SAMPLER
) -> torch.Generator:
    """One seed per (eval seed, batch, stream): every rollout of a batch samples from the same
    sampler stream; random actions come from a stream of their own."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + batch_index) * 2 + stream)
