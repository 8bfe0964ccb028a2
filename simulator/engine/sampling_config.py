"""How MaskGIT samples a frame (`SamplingConfig`): a plain dataclass that commands, world folders
and the app validate before any model or torch loads. The sampler is
simulator/engine/sampling.py."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

# Share of a frame's tokens still masked after a fraction p in [0, 1] of the steps.
SCHEDULES: dict[str, Callable[[float], float]] = {
    "cosine": lambda p: math.cos(math.pi / 2 * p),  # MaskGIT's best: few tokens first
    "linear": lambda p: 1.0 - p,
}
ORDERS = ("random", "confidence")


@dataclass
class SamplingConfig:
    steps: int = 8  # MaskGIT steps per frame; Genie uses 25, fewer are faster on CPU
    temperature: float = 1.0  # softmax temperature; 0 takes the most likely code (greedy)
    schedule: str = "cosine"  # a key of SCHEDULES
    order: str = "random"  # "random" or "confidence" (see simulator/engine/sampling.py)
    # Classifier-free guidance on the actions: logits_free + guidance * (logits - logits_free),
    # where logits_free hide the new frame's action. 1 is off; above 1 a step costs a second
    # forward pass and needs a model trained with action_dropout > 0.
    guidance: float = 1.0

    def override(self, **changes: Any) -> SamplingConfig:
        """A validated copy with the fields given a value replaced (None keeps a field): how
        commands apply their --steps/--temperature/--guidance flags to a world's defaults."""
        new = replace(self, **{k: v for k, v in changes.items() if v is not None})
        new.validate()
        return new

    def validate(self) -> None:
        problems = []
        if self.steps < 1:
            problems.append(f"steps must be >= 1, got {self.steps}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            problems.append(f"temperature must be finite and >= 0, got {self.temperature}")
        if not (self.guidance >= 0 and math.isfinite(self.guidance)):
            problems.append(f"guidance must be finite and >= 0, got {self.guidance}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {sorted(SCHEDULES)}, got {self.schedule!r}")
        if self.order not in ORDERS:
            problems.append(f"order must be one of {list(ORDERS)}, got {self.order!r}")
        if problems:
            raise ValueError("bad sampling config: " + "; ".join(problems))
