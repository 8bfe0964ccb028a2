"""Options of a training run, shared by every model's `train:` YAML section."""

from __future__ import annotations

from dataclasses import dataclass

# accelerate's names for the precisions the driver supports; fp16 needs loss scaling, which no
# worldsim model wants when bf16 exists.
PRECISIONS = {"no": "no", "bf16": "bf16"}


@dataclass
class TrainConfig:
    out_dir: str = "runs/train"  # checkpoints/, final/, train.csv, eval.csv, tensorboard/, visuals/
    steps: int = 10_000  # optimizer steps in total (a resumed run continues up to this)
    batch_size: int = 32  # global batch, split evenly across processes
    lr: float = 1e-3  # peak; near 1e-3 suits the small (1-10M) models trained here
    weight_decay: float = 0.01  # AdamW, decoupled
    warmup_steps: int = 150  # linear warm-up; public recipes' 5k-10k exceed a whole CPU run
    min_lr_ratio: float = 0.1  # cosine decays the lr to lr * min_lr_ratio at `steps`
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping (the norm is still logged)
    mixed_precision: str = "no"  # "no" or "bf16" (autocast; weights and optimizer stay fp32)
    log_every: int = 10  # steps between rows of train.csv (means over the interval)
    eval_every: int = 500  # steps between evaluations + pictures; 0: only at the end
    eval_batches: int = 4  # per evaluation, of the per-process batch size, on the main process
    checkpoint_every: int = 500  # steps between checkpoints; 0: only at the end
    keep_last: int = 3  # older checkpoints are deleted
    seed: int = 0
    time_budget_min: float | None = None  # stop (and save) after this many minutes of this run
    resume: bool = True  # continue from the newest checkpoint in out_dir if there is one
    # A save_pretrained folder of the same model whose weights start a fresh run (fine-tuning);
    # a run that resumes from its own checkpoint restores those weights instead.
    init_from: str | None = None

    def validate(self) -> None:
        """Raise ValueError naming every nonsense option."""
        problems = []
        for name in ("steps", "batch_size", "log_every", "eval_batches", "keep_last"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "grad_clip", "weight_decay"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.mixed_precision not in PRECISIONS:
            problems.append(
                f"mixed_precision must be one of {sorted(PRECISIONS)}, got {self.mixed_precision!r}"
            )
        if self.time_budget_min is not None and not self.time_budget_min > 0:
            problems.append(f"time_budget_min must be > 0 or null, got {self.time_budget_min}")
        if not self.out_dir:
            problems.append("out_dir is required")
        if problems:
            raise ValueError("bad train options: " + "; ".join(problems))
