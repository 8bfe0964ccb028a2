"""Does the dynamics read its actions? Its loss on real clips with their own actions against the
same clips with another clip's actions (the shuffled check).

A model whose loss on the tokens that change does not rise when the actions are shuffled ignores
the keys, whatever its loss; this costs two forward passes a batch, no sampling. The masks are
MaskGIT's training masks (a per-clip rate from U(0.5, 1) over frames 1..), drawn from a seeded
generator so that both passes, and every run, score the same positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from simulator.models.dynamics import ActionInputs, DynamicsModel


@dataclass
class ShuffleMeter:
    """Summed cross-entropies (nats) over masked tokens: all of them, and those whose real token
    differs from the previous frame's; "own" with each clip's actions, "shuffled" with the next
    clip's in the batch."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    @torch.no_grad()
    def add(
        self, dynamics: DynamicsModel, tokens_BThw: Tensor, actions: ActionInputs, seed: int
    ) -> None:
        b = tokens_BThw.shape[0]
        if b < 2:
            return  # no other clip to borrow actions from
        gen = torch.Generator(tokens_BThw.device).manual_seed(seed)
        rate_B111 = 0.5 + 0.5 * torch.rand(b, 1, 1, 1, generator=gen, device=tokens_BThw.device)
        mask = torch.rand(tokens_BThw.shape, generator=gen, device=tokens_BThw.device) < rate_B111
        mask[:, 0] = False
        previous = torch.cat([tokens_BThw[:, :1], tokens_BThw[:, :-1]], dim=1)
        changed = (previous != tokens_BThw)[mask]
        shuffled = ActionInputs(*(None if a is None else a.roll(1, 0) for a in actions.as_tuple()))
        for name, acts in (("own", actions), ("shuffled", shuffled)):
            hidden_BTND = dynamics.transform(dynamics.embed(tokens_BThw, mask, acts))
            logits = dynamics.head(hidden_BTND[rearrange(mask, "b t h w -> b t (h w)")]).float()
            loss = F.cross_entropy(logits, tokens_BThw[mask], reduction="none")
            for part, keep in (("all", torch.ones_like(changed)), ("changed", changed)):
                key = f"{name}_{part}"
                self.sums[key] = self.sums.get(key, 0.0) + float(loss[keep].sum())
                self.counts[key] = self.counts.get(key, 0) + int(keep.sum())

    def result(self) -> dict[str, float] | None:
        """Mean losses and the rise from shuffling (nats a token), or None without data."""
        if not self.counts.get("own_changed"):
            return None
        out = {f"loss_{k}": self.sums[k] / self.counts[k] for k in self.sums}
        for part in ("all", "changed"):
            out[f"rise_{part}"] = out[f"loss_shuffled_{part}"] - out[f"loss_own_{part}"]
        return out
