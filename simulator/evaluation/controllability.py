"""Does the world obey the controls? An inverse-dynamics model (IDM) reads the action back from
pairs of consecutive frames; its agreement with the commanded action on the world's frames,
next to its agreement on real frames (the ceiling) and on mismatched frames (the floor), is the
controllability score: what "the character goes right when I press right" means, per action.

Actions are scored as the game's effect classes (the IDM's `action_groups`), so ids the game
treats as one are never counted as confusions. Continuous controls (a regression IDM) are scored
by R² per control: how much of each control's variance the IDM recovers from the frames
(`RegressionMeter`); `meter_for` picks the meter an IDM needs.

Every kind is also scored per transition index (`by_step`): on a rollout, how the control the
IDM reads back holds up as the world's own frames pile up. Next to it, ONE_STEP scores frame t+1
sampled from the real frames 0..t, so a control that one step carries but a rollout loses shows
as the gap between the two.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from data_pipeline.loader import Batch
from simulator.evaluation.idm import InverseDynamicsModel, r_squared

GENERATED, REAL, FLOOR = "generated", "real", "floor"
# The tokenizer's rendering of the real clip's own tokens: what a perfect dynamics model would
# score, so a low figure there puts the fault in the renderer, not the dynamics.
RECONSTRUCTED = "reconstructed"
# Frame t+1 sampled by the world from the real frames 0..t, paired with real frame t.
ONE_STEP = "one_step"
KINDS = (GENERATED, ONE_STEP, RECONSTRUCTED, REAL, FLOOR)


@dataclass
class Agreement:
    """How often the IDM recovered the action, overall and per effect class."""

    accuracy: float
    balanced_accuracy: float  # mean over classes of per-class accuracy: no class dominates
    per_class: dict[str, float]  # class name -> accuracy (NaN-free: classes never seen omitted)
    transitions: int
    by_step: list[float] = field(default_factory=list)  # accuracy of transition t, t = 0, 1, ...


class _TransitionMeter:
    """What both meters share: clips taken apart into scored transitions (`add_pair`)."""

    @torch.no_grad()
    def add(self, kind: str, frames_BTCHW: Tensor, actions_BA: Tensor) -> None:
        """Score every transition t -> t+1 of `frames` (A = T - 1 actions, action t between
        frames t and t+1; (B, A) ids or (B, A, D) controls) under `kind`; REAL also scores the
        floor, pairing frame t with frame t+1 of another clip of the batch."""
        for t in range(actions_BA.shape[1]):
            prev, nxt = frames_BTCHW[:, t], frames_BTCHW[:, t + 1]
            self.add_pair(kind, prev, nxt, actions_BA[:, t], t)
            if kind == REAL and frames_BTCHW.shape[0] > 1:
                self.add_pair(FLOOR, prev, nxt.roll(1, dims=0), actions_BA[:, t], t)

    def add_pair(
        self, kind: str, prev_BCHW: Tensor, next_BCHW: Tensor, actions_B: Tensor, step: int
    ) -> None:
        raise NotImplementedError


class ControllabilityMeter(_TransitionMeter):
    """Accumulates IDM hits per effect class for generated, reconstructed and real frames and the
    floor."""

    def __init__(self, idm: InverseDynamicsModel) -> None:
        self.idm = idm
        k = idm.cfg.num_classes
        names = idm.cfg.group_names or [str(i) for i in range(k)]
        self.names = list(names)
        self.hits = {name: torch.zeros(k, dtype=torch.int64) for name in KINDS}
        self.totals = {name: torch.zeros(k, dtype=torch.int64) for name in KINDS}
        self.steps: dict[str, dict[int, list[int]]] = {name: {} for name in KINDS}  # t -> [hit, n]

    @torch.no_grad()
    def add_pair(
        self, kind: str, prev_BCHW: Tensor, next_BCHW: Tensor, actions_B: Tensor, step: int
    ) -> None:
        """Score the transitions prev -> next under `actions` as transition `step`."""
        target = self.idm.classes(actions_B.to(prev_BCHW.device)).cpu()
        hit = self.idm.predict(prev_BCHW, next_BCHW).argmax(-1).cpu() == target
        k = len(self.names)
        self.totals[kind] += torch.bincount(target, minlength=k)
        self.hits[kind] += torch.bincount(target[hit], minlength=k)
        counts = self.steps[kind].setdefault(step, [0, 0])
        counts[0] += int(hit.sum())
        counts[1] += len(target)

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
            by_step=[hit / n for _, (hit, n) in sorted(self.steps[kind].items())],
        )


@dataclass
class Regression:
    """How much of each control the IDM recovered: R² and mean absolute error per control."""

    r2: dict[str, float]
    mean_r2: float
    mae: dict[str, float]
    transitions: int
    # R² per control of transition t, t = 0, 1, ...
    by_step: dict[str, list[float]] = field(default_factory=dict)


class RegressionMeter(_TransitionMeter):
    """`ControllabilityMeter` for continuous controls: keeps the IDM's predictions and the
    commanded controls per kind (`KINDS`) and transition index."""

    def __init__(self, idm: InverseDynamicsModel) -> None:
        self.idm = idm
        d = idm.cfg.continuous_dim
        self.names = list(idm.cfg.control_names or [str(i) for i in range(d)])
        # kind -> (predicted, commanded, transition index) batches
        self.pairs: dict[str, list[tuple[Tensor, Tensor, int]]] = {k: [] for k in KINDS}

    @torch.no_grad()
    def add_pair(
        self, kind: str, prev_BCHW: Tensor, next_BCHW: Tensor, actions_BD: Tensor, step: int
    ) -> None:
        predicted = self.idm.predict(prev_BCHW, next_BCHW).cpu()
        self.pairs[kind].append((predicted, actions_BD.float().cpu(), step))

    def agreement(self, kind: str) -> Regression | None:
        if not self.pairs[kind]:
            return None
        predicted, target = self._stacked(self.pairs[kind])
        r2 = r_squared(predicted, target).tolist()
        mae = (predicted - target).abs().mean(0).tolist()
        steps = sorted({step for *_, step in self.pairs[kind]})
        per_step = [
            r_squared(*self._stacked([p for p in self.pairs[kind] if p[2] == step])).tolist()
            for step in steps
        ]
        return Regression(
            r2=dict(zip(self.names, r2, strict=True)),
            mean_r2=sum(r2) / len(r2),
            mae=dict(zip(self.names, mae, strict=True)),
            transitions=len(target),
            by_step={name: [r[i] for r in per_step] for i, name in enumerate(self.names)},
        )

    @staticmethod
    def _stacked(pairs: list[tuple[Tensor, Tensor, int]]) -> tuple[Tensor, Tensor]:
        return torch.cat([p for p, _, _ in pairs]), torch.cat([t for _, t, _ in pairs])


def meter_for(idm: InverseDynamicsModel) -> ControllabilityMeter | RegressionMeter:
    return RegressionMeter(idm) if idm.cfg.continuous_dim else ControllabilityMeter(idm)


@dataclass
class RegressionReport:
    """`IDMReport` for continuous controls."""

    real: Regression
    floor: Regression
    controls: list[str]
    reconstructed: Regression | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def render(self) -> str:
        def line(r: Regression) -> str:
            return ", ".join(f"{k} R² {r.r2[k]:.2f} (error {r.mae[k]:.2f})" for k in self.controls)

        lines = [
            f"IDM on {self.real.transitions} held-out real transitions: {line(self.real)}",
            f"  random pairs: {line(self.floor)}",
        ]
        if self.reconstructed is not None:
            renders = line(self.reconstructed)
            lines.append(f"  on the tokenizer's renders of the real tokens: {renders}")
        return "\n".join(lines)


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
    reconstruct: Callable[[Tensor, Tensor | None, Tensor], Tensor] | None = None,
) -> IDMReport | RegressionReport:
    """The IDM's agreement with the true actions of real clips, on mismatched pairs and, given
    a tokenizer's `reconstruct` ((frames, tokens or None, actions) -> frames rendered from frame
    0 and their own tokens, the actions read by a renderer told the controls), on those
    renders."""
    idm.eval()
    meter = meter_for(idm)
    device = next(idm.parameters()).device
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        frames, actions = batch.frames.to(device), batch.actions[:, :-1]
        meter.add(REAL, frames, actions)
        if reconstruct is not None:
            meter.add(RECONSTRUCTED, reconstruct(frames, None, batch.actions.to(device)), actions)
    real, floor = meter.agreement(REAL), meter.agreement(FLOOR)
    if real is None or floor is None:
        raise ValueError("the IDM evaluation needs batches of at least 2 clips with actions")
    if isinstance(real, Regression) and isinstance(floor, Regression):
        recon = meter.agreement(RECONSTRUCTED)
        return RegressionReport(
            real, floor, meter.names, recon if isinstance(recon, Regression) else None
        )
    assert isinstance(real, Agreement) and isinstance(floor, Agreement)
    recon = meter.agreement(RECONSTRUCTED)
    return IDMReport(real, floor, meter.names, recon if isinstance(recon, Agreement) else None)
