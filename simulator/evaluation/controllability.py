"""Does the world obey the controls? An inverse-dynamics model (IDM) reads the action back from
pairs of consecutive frames; its agreement with the commanded action on the world's frames,
next to its agreement on real frames (the ceiling) and on mismatched frames (the floor), is the
controllability score: what "the character goes right when I press right" means, per action.

Actions are scored as the game's effect classes (the IDM's `action_groups`), so ids the game
treats as one are never counted as confusions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from data_pipeline.loader import Batch
from simulator.evaluation.idm import InverseDynamicsModel

GENERATED, REAL, FLOOR = "generated", "real", "floor"
# The tokenizer's rendering of the real clip's own tokens: what a perfect dynamics model would
# score, so a low figure there puts the fault in the renderer, not the dynamics.
RECONSTRUCTED = "reconstructed"


@dataclass
class Agreement:
    """How often the IDM recovered the action, overall and per effect class."""

    accuracy: float
    balanced_accuracy: float  # mean over classes of per-class accuracy: no class dominates
    per_class: dict[str, float]  # class name -> accuracy (NaN-free: classes never seen omitted)
    transitions: int


class ControllabilityMeter:
    """Accumulates IDM hits per effect class for generated, reconstructed and real frames and the
    floor."""

    def __init__(self, idm: InverseDynamicsModel) -> None:
        self.idm = idm
        k = idm.cfg.num_classes
        names = idm.cfg.group_names or [str(i) for i in range(k)]
        self.names = list(names)
        self.hits = {
            name: torch.zeros(k, dtype=torch.int64)
            for name in (GENERATED, RECONSTRUCTED, REAL, FLOOR)
        }
        self.totals = {name: torch.zeros(k, dtype=torch.int64) for name in self.hits}

    @torch.no_grad()
    def add(self, kind: str, frames_BTCHW: Tensor, actions_BA: Tensor) -> None:
        """Score every transition t -> t+1 of `frames` (A = T - 1 actions, action t between
        frames t and t+1) under kind GENERATED or REAL; REAL also scores the floor, pairing
        frame t with frame t+1 of another clip of the batch."""
        target = self.idm.classes(actions_BA.to(frames_BTCHW.device))
        for t in range(actions_BA.shape[1]):
            prev, nxt = frames_BTCHW[:, t], frames_BTCHW[:, t + 1]
            self._count(kind, self.idm.predict(prev, nxt).argmax(-1), target[:, t])
            if kind == REAL and frames_BTCHW.shape[0] > 1:
                other = nxt.roll(1, dims=0)
                self._count(FLOOR, self.idm.predict(prev, other).argmax(-1), target[:, t])

    def _count(self, kind: str, predicted: Tensor, target: Tensor) -> None:
        k = len(self.names)
        self.totals[kind] += torch.bincount(target.cpu(), minlength=k)
        self.hits[kind] += torch.bincount(target[predicted == target].cpu(), minlength=k)

    def agreement(self, kind: str) -> Agreement | None:
        hits, totals = self.hits[kind], self.totals[kind]
        if int(totals.sum()) == 0:
            return None
        seen = totals > 0
        per_class = (hits[seen].double() / totals[seen]).tolist()
        names = [n for n, s in zip(self.names, seen.tolist(), strict=True) if s]
        return Agreement(
            accuracy=float(hits.sum() / totals.sum()),
            balanced_accuracy=sum(per_class) / len(per_class),
            per_class=dict(zip(names, per_class, strict=True)),
            transitions=int(totals.sum()),
        )


@dataclass
class IDMReport:
    real: Agreement  # consecutive real frames: the ceiling of controllability
    floor: Agreement  # frame t with frame t+1 of another clip: what no information scores
    classes: list[str]
    # A tokenizer's closed-loop rendering of each real clip from its first frame and its own
    # tokens (when one was given): the controllability a perfect dynamics model would reach.
    reconstructed: Agreement | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def render(self) -> str:
        per = ", ".join(f"{k} {v:.0%}" for k, v in self.real.per_class.items())
        lines = [
            f"IDM on {self.real.transitions} held-out real transitions: accuracy "
            f"{self.real.accuracy:.1%} (balanced {self.real.balanced_accuracy:.1%}); random pairs "
            f"{self.floor.accuracy:.1%} (balanced {self.floor.balanced_accuracy:.1%})",
            f"  per action: {per}",
        ]
        if (recon := self.reconstructed) is not None:
            per = ", ".join(f"{k} {v:.0%}" for k, v in recon.per_class.items())
            lines += [
                f"  on the tokenizer's renders of the real tokens: accuracy {recon.accuracy:.1%} "
                f"(balanced {recon.balanced_accuracy:.1%}), "
                f"{recon.accuracy / max(self.real.accuracy, 1e-9):.0%} of real",
                f"  per action: {per}",
            ]
        return "\n".join(lines)


@torch.no_grad()
def idm_accuracy(
    idm: InverseDynamicsModel,
    loader: Iterable[Batch],
    max_batches: int | None = None,
    reconstruct: Callable[[Tensor], Tensor] | None = None,
) -> IDMReport:
    """The IDM's agreement with the true actions of real clips, on mismatched pairs and, given
    a tokenizer's `reconstruct` (frames -> frames rendered from frame 0 and their own tokens),
    on those renders."""
    idm.eval()
    meter = ControllabilityMeter(idm)
    device = next(idm.parameters()).device
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        frames, actions = batch.frames.to(device), batch.actions[:, :-1]
        meter.add(REAL, frames, actions)
        if reconstruct is not None:
            meter.add(RECONSTRUCTED, reconstruct(frames), actions)
    real, floor = meter.agreement(REAL), meter.agreement(FLOOR)
    if real is None or floor is None:
        raise ValueError("the IDM evaluation needs batches of at least 2 clips with actions")
    return IDMReport(real, floor, meter.names, meter.agreement(RECONSTRUCTED))
