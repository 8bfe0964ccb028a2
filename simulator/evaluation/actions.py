"""Which actions each evaluation rollout gets: the dynamics model's action inputs, the curve
names they feed (true, LAM-inferred, uniformly random), and the seeding that keeps the sampler's
randomness identical across them (Genie's ΔtPSNR compares rollouts with identical samplers and
seeds).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from data_pipeline.loader import Batch
from simulator.dynamics import ActionInputs, DynamicsModel

TRUE, LAM, RANDOM = "true_actions", "lam_actions", "random_actions"


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


def action_sources(
    cond: Conditioning,
    batch: Batch,
    latent_BA: Tensor,
    num_actions: int,
    generator: torch.Generator,
) -> dict[str, ActionInputs]:
    """Curve name -> actions (A = num_actions) for rollouts of this batch.

    A model on latent actions gets the LAM's and uniformly random ones (its true actions, if it
    takes them too, are the clip's in both, unless the model is `separable`: then the latent
    curves get latent actions alone and a third curve the true actions alone); a model on true
    actions only gets the clip's and, if discrete, uniformly random ones. The random draw uses
    `generator` so sampling seeds stay equal.
    """
    if cond.true and not bool(batch.action_mask.all()):
        missing = int((~batch.action_mask).sum())
        raise ValueError(
            f"the dynamics conditions on true actions but {missing} clips in batch "
            f"{batch.keys[:3]}... have none"
        )
    b, device = latent_BA.shape[0], latent_BA.device
    true = batch.actions[:, :num_actions].to(device)
    base = ActionInputs(
        discrete=true if cond.discrete is not None else None,
        continuous=true if cond.continuous is not None else None,
    )
    if cond.latent is not None:
        rand = torch.randint(cond.latent, (b, num_actions), generator=generator)
        with_latent = ActionInputs() if cond.separable else base
        sources = {
            LAM: replace(with_latent, latent=latent_BA[:, :num_actions]),
            RANDOM: replace(with_latent, latent=rand.to(device)),
        }
        if cond.separable and cond.true:
            sources[TRUE] = base
        return sources
    sources = {TRUE: base}
    if cond.discrete is not None:
        rand = torch.randint(cond.discrete, (b, num_actions), generator=generator)
        sources[RANDOM] = replace(base, discrete=rand.to(device))
    return sources


SAMPLER, ACTION_DRAW = 0, 1  # generator streams of one batch


def generator_for(
    seed: int, batch_index: int, device: str | torch.device, stream: int = SAMPLER
) -> torch.Generator:
    """One seed per (eval seed, batch, stream): every rollout of a batch samples from the same
    sampler stream; random actions come from a stream of their own."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + batch_index) * 2 + stream)
