"""Does the world obey the controls? An inverse-dynamics model (IDM) reads the action back from
pairs of consecutive frames; its agreement with the commanded action on the world's frames,
next to its agreement on real frames (the ceiling) and on mismatched frames (the floor), is the
controllability score: what "the character goes right when I press right" means, per action.

Actions are scored as the game's effect classes (the IDM's `action_groups`), so ids the game
treats as one are never counted as confusions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from data_pipeline.loader import Batch
from simulator.evaluation.idm import InverseDynamicsModel

GENERATED, REAL, FLOOR = "generated", "real", "floor"


@dataclass
class Agreement:
    """How often the IDM recovered the action, overall and per effect class."""

    accuracy: float
    balanced_accuracy: float  # mean over classes of per-class accuracy: no class dominates
    per_class: dict[str, float]  # class name -> accuracy (NaN-free: classes never seen omitted)
    transitions: int


class ControllabilityMeter:
    """Accumulates IDM hits per effect class for generated frames, real frames and the floor."""

    def __init__(self, idm: InverseDynamicsModel) -> None:
        self.idm = idm
        k = idm.cfg.num_classes
        names = idm.cfg.group_names or [str(i) for i in range(k)]
        self.names = list(names)
        self.hits = {name: torch.zeros(k, dtype=torch.int64) for name in (GENERATED, REAL, FLOOR)}
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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def render(self) -> str:
        per = ", ".join(f"{k} {v:.0%}" for k, v in self.real.per_class.items())
        return (
            f"IDM on {self.real.transitions} held-out real transitions: accuracy "
            f"{self.real.accuracy:.1%} (balanced {self.real.balanced_accuracy:.1%}); random pairs "
            f"{self.floor.accuracy:.1%} (balanced {self.floor.balanced_accuracy:.1%})\n"
            f"  per action: {per}"
        )


@torch.no_grad()
def idm_accuracy(
    idm: InverseDynamicsModel, loader: Iterable[Batch], max_batches: int | None = None
) -> IDMReport:
    """The IDM's agreement with the true actions of real clips, and on mismatched pairs."""
    idm.eval()
    meter = ControllabilityMeter(idm)
    device = next(idm.parameters()).device
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        meter.add(REAL, batch.frames.to(device), batch.actions[:, :-1])
    real, floor = meter.agreement(REAL), meter.agreement(FLOOR)
    if real is None or floor is None:
        raise ValueError("the IDM evaluation needs batches of at least 2 clips with actions")
    return IDMReport(real, floor, meter.names)
