"""The one training loop every worldsim model shares, on `accelerate`.

A model plugs in through a `TrainTask` (build the model, the data, the loss, the pictures); the
driver owns the rest: AdamW with linear warm-up and cosine decay, gradient clipping, bf16 autocast,
DDP across processes and machines (`accelerate launch`), logs, evaluation, atomic checkpoints with
exact resume, and the `save_pretrained` export in `<out>/final`.

`batch_size` is the global batch: each of N processes gets `batch_size // N` samples, DDP averages
the gradients, and the logged loss is the mean over processes, so a run is the same run on 1 or N
processes up to floating-point summation order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import send_to_device, set_seed
from tqdm.auto import tqdm

from worldsim.train.checkpoint import (
    Pretrained,
    export_pretrained,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    whole_copy,
)
from worldsim.train.config import PRECISIONS, TrainConfig
from worldsim.train.monitor import RunLog


class LossOutput(Protocol):
    """What a task's loss returns; a model's own typed output can satisfy this directly."""

    @property
    def loss(self) -> torch.Tensor: ...  # scalar, mean over this process's batch

    @property
    def metrics(self) -> Mapping[str, float | torch.Tensor]: ...  # scalars, same keys every step


class ResumableBatches(Protocol):
    """Training data of one process. `state_dict()` is its position after the last batch it
    yielded; after `load_state_dict`, a fresh `iter()` continues from there. When an iterator
    ends, the driver starts a new one (the next epoch)."""

    def __iter__(self) -> Iterator[Any]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TrainTask(Protocol):
    """The model-specific part of training. Batches may be any tensors container (a dataclass,
    NamedTuple, dict...); the driver moves its tensors to the device."""

    def build_model(self) -> torch.nn.Module: ...  # must also have save_pretrained (ModelMixin)

    def train_batches(
        self, batch_size: int, rank: int, world_size: int, seed: int
    ) -> ResumableBatches: ...

    def eval_batches(self, batch_size: int) -> Iterable[Any] | None: ...  # None: no evaluation

    def loss(self, model: torch.nn.Module, batch: Any) -> LossOutput: ...

    def visualize(self, model: torch.nn.Module, batch: Any, path_prefix: Path) -> list[Path]: ...


class TrainingDiverged(FloatingPointError):
    """A loss or gradient norm was NaN/inf; nothing was saved after it."""


@dataclass
class TrainResult:
    step: int  # optimizer steps done in total
    stop_reason: str  # "steps" or "time_budget"
    final_dir: Path  # save_pretrained export
    checkpoint: Path  # newest checkpoint, resumable
    losses: list[float] = field(default_factory=list)  # global mean loss of each step of this run

    def render(self) -> str:
        last = f", last loss {self.losses[-1]:.5g}" if self.losses else ""
        return (
            f"stopped at step {self.step} ({self.stop_reason}{last})\n"
            f"model: {self.final_dir}\ncheckpoint: {self.checkpoint}"
        )


def lr_lambda(step: int, cfg: TrainConfig) -> float:
    """Multiplier of cfg.lr for the optimizer step with index `step` (0-based).

    References: SGDR cosine annealing (Loshchilov & Hutter, arXiv 1608.03983), without restarts.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def train(task: TrainTask, cfg: TrainConfig) -> TrainResult:
    """Train until cfg.steps or the time budget; resumable; returns where everything went."""
    cfg.validate()
    # The scheduler is stepped once per optimizer step, whatever the process count (accelerate
    # would otherwise step it N times, assuming a per-process schedule).
    accelerator = Accelerator(
        mixed_precision=PRECISIONS[cfg.mixed_precision], step_scheduler_with_optimizer=False
    )
    return _Run(task, cfg, accelerator).run()


class _LossModule(torch.nn.Module):
    """Routes the task's loss through forward(), so DDP syncs its gradients and accelerate's
    autocast covers it (both hook forward(), not arbitrary methods such as model.loss)."""

    def __init__(self, task: TrainTask, model: torch.nn.Module) -> None:
        super().__init__()
        self.task = task
        self.model = model

    def forward(self, batch: Any) -> LossOutput:
        return self.task.loss(self.model, batch)


class _Run:
    def __init__(self, task: TrainTask, cfg: TrainConfig, accelerator: Accelerator) -> None:
        self.task, self.cfg, self.acc = task, cfg, accelerator
        self.out = Path(cfg.out_dir)
        world = accelerator.num_processes
        if cfg.batch_size % world:
            raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {world} processes")
        self.local_batch = cfg.batch_size // world
        set_seed(cfg.seed)  # identical initial weights on every process
        model = task.build_model()
        if not hasattr(model, "save_pretrained"):
            raise ValueError(f"{type(model).__name__} has no save_pretrained (use ModelMixin)")
        self.inner: Pretrained = model  # type: ignore[assignment]
        if cfg.init_from:
            load_weights(model, cfg.init_from)
        trainable = [p for p in model.parameters() if p.requires_grad]  # a task may freeze some
        if not trainable:
            raise ValueError(f"{type(model).__name__} has no trainable parameters")
        optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, cfg))
        self.model, self.optimizer, self.scheduler = accelerator.prepare(
            _LossModule(task, model), optimizer, scheduler
        )
        set_seed(cfg.seed, device_specific=True)  # different random masks/noise per process
        self.data = task.train_batches(self.local_batch, accelerator.process_index, world, cfg.seed)
        self.step = 0
        self.last_checkpoint: Path | None = None
        self.losses: list[float] = []
        self._window: dict[str, torch.Tensor] = {}  # metric sums since the last log row
        self._window_steps = 0
        self._evaluated_step = self._checkpointed_step = -1
        self._clock = self._log_clock = time.monotonic()

    def run(self) -> TrainResult:
        self._restore()
        log = RunLog(self.out, resume_step=self.step) if self.acc.is_main_process else None
        batches = self._batches()
        main = self.acc.is_main_process
        bar = tqdm(
            total=self.cfg.steps, initial=self.step, disable=None if main else True, unit="step"
        )
        stop_reason, self._log_clock = "steps", time.monotonic()
        try:
            while self.step < self.cfg.steps:
                over_budget = self._train_step(next(batches))
                bar.update(1)
                self._periodic(log, bar)
                if over_budget:
                    stop_reason = "time_budget"
                    break
            # Save before the closing evaluation: a failing evaluation must not lose the run.
            if self._checkpointed_step != self.step:
                self._checkpoint()
            final = self.out / "final"
            model = self._whole_model()
            if model is not None:
                export_pretrained(model, final)
            self.acc.wait_for_everyone()
            if self._evaluated_step != self.step:
                self._evaluate(log)
        finally:
            bar.close()
            if log is not None:
                log.close()
        assert self.last_checkpoint is not None
        return TrainResult(self.step, stop_reason, final, self.last_checkpoint, self.losses)

    def _restore(self) -> None:
        latest = latest_checkpoint(self.out / "checkpoints")
        if latest is None:
            self._write_config()
            return
        if not self.cfg.resume:
            raise ValueError(
                f"{self.out} already holds checkpoints (newest {latest.name}); set resume=true "
                "to continue that run or choose another out_dir"
            )
        restored = load_checkpoint(self.acc, latest)
        state = restored.process_state
        self.data.load_state_dict(state["loader"])
        # The log row in progress continues, so rows match an uninterrupted run's.
        self._window = {k: v.to(self.acc.device) for k, v in state["log_window"].items()}
        self._window_steps = state["log_window_steps"]
        self.step, self.last_checkpoint = restored.step, latest
        self._checkpointed_step = self._evaluated_step = restored.step

    def _write_config(self) -> None:
        if self.acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            text = yaml.safe_dump(dataclasses.asdict(self.cfg), sort_keys=False)
            (self.out / "train_config.yaml").write_text(text)

    def _batches(self) -> Iterator[Any]:
        # One empty pass is normal: a run resumed from a checkpoint taken exactly at an epoch's
        # end first finishes that (spent) epoch. Two in a row mean there is no data at all.
        empty_passes = 0
        while empty_passes < 2:
            empty_passes += 1
            for batch in self.data:
                empty_passes = 0
                yield _to_device(batch, self.acc.device)
        raise ValueError("the training data yielded no batches")

    def _train_step(self, batch: Any) -> bool:
        """One optimizer step; returns whether any process has run past the time budget."""
        out = self.model(batch)
        self.acc.backward(out.loss)
        max_norm = self.cfg.grad_clip or math.inf
        grad_norm = self.acc.clip_grad_norm_(self.model.parameters(), max_norm)
        budget = self.cfg.time_budget_min
        over = budget is not None and time.monotonic() - self._clock > 60 * budget
        # One collective per step: every process sees the same loss, norm and stop decision, so
        # all of them stop together (a lone process stopping would hang the others).
        parts = [out.loss.detach(), torch.as_tensor(grad_norm), torch.tensor(float(over))]
        local = torch.stack([p.to(self.acc.device, torch.float32) for p in parts])
        loss, norm, overs = self.acc.reduce(local, reduction="sum").tolist()
        loss, norm = loss / self.acc.num_processes, norm / self.acc.num_processes
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise TrainingDiverged(
                f"non-finite loss {loss} (grad norm {norm}) at step {self.step + 1}; stopped "
                f"before updating. Last good checkpoint: {self.last_checkpoint or 'none yet'}"
            )
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.losses.append(loss)
        self._accumulate({"loss": loss, "grad_norm": norm, "lr": lr, **out.metrics})
        return overs > 0

    def _accumulate(self, metrics: Mapping[str, float | torch.Tensor]) -> None:
        for key, value in metrics.items():
            value = torch.as_tensor(value, device=self.acc.device).detach().float()
            self._window[key] = self._window.get(key, torch.zeros_like(value)) + value
        self._window_steps += 1

    def _periodic(self, log: RunLog | None, bar: Any) -> None:
        cfg, step = self.cfg, self.step
        if step % cfg.log_every == 0:
            self._log(log, bar)
        if cfg.eval_every and step % cfg.eval_every == 0:
            self._evaluate(log)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            self._checkpoint()

    def _log(self, log: RunLog | None, bar: Any) -> None:
        keys = sorted(self._window)
        sums = torch.stack([self._window[k] for k in keys])
        # loss, grad_norm and lr are already equal on all processes; the task's metrics differ.
        means = (self.acc.reduce(sums, reduction="mean") / self._window_steps).tolist()
        row = dict(zip(keys, means, strict=True))
        row["steps_per_s"] = self._window_steps / max(time.monotonic() - self._log_clock, 1e-9)
        self._window, self._window_steps = {}, 0
        self._log_clock = time.monotonic()
        if log is not None:
            log.write("train", self.step, row)
            bar.set_postfix(loss=f"{row['loss']:.4g}", lr=f"{row['lr']:.2e}")

    def _whole_model(self) -> Any:
        """Collective. The main process gets a plain copy of the model with whole tensors on its
        device, the others None. FSDP shards the parameters across processes, so evaluation and
        export never use the wrapped model's own; every other setup takes the same path."""
        state = self.acc.get_state_dict(self.model)  # FSDP: gathered onto the main process
        if not self.acc.is_main_process:
            return None
        weights = {k.removeprefix("model."): v for k, v in state.items()}  # inside _LossModule
        return whole_copy(self.inner, weights).to(self.acc.device)

    def _evaluate(self, log: RunLog | None) -> None:
        """Main process only, on a copy of the model: the numbers do not depend on the process
        count, and the training random streams are left exactly as they were."""
        self._evaluated_step = self.step
        model = self._whole_model()
        if model is not None:
            batches = self.task.eval_batches(self.local_batch)
            if batches is not None:
                with _preserved_rng(), torch.no_grad(), self.acc.autocast():
                    self._eval_on(model, batches, log)
        self.acc.wait_for_everyone()

    def _eval_on(self, model: torch.nn.Module, batches: Iterable[Any], log: RunLog | None) -> None:
        sums: dict[str, float] = {}
        first, count = None, 0
        for batch in batches:
            batch = _to_device(batch, self.acc.device)
            first = batch if first is None else first
            out = self.task.loss(model, batch)
            for key, value in {"loss": out.loss, **out.metrics}.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            count += 1
            if count == self.cfg.eval_batches:
                break
        if first is not None:
            if log is not None:
                log.write("eval", self.step, {k: v / count for k, v in sums.items()})
            prefix = self.out / "visuals" / f"step-{self.step:08d}"
            prefix.parent.mkdir(parents=True, exist_ok=True)
            self.task.visualize(model, first, prefix)

    def _checkpoint(self) -> None:
        process_state = {
            "loader": self.data.state_dict(),
            "log_window": {k: v.cpu() for k, v in self._window.items()},
            "log_window_steps": self._window_steps,
        }
        meta = {"config": dataclasses.asdict(self.cfg)}
        root, keep = self.out / "checkpoints", self.cfg.keep_last
        self.last_checkpoint = save_checkpoint(
            self.acc, root, self.step, self._whole_model(), process_state, meta, keep
        )
        self._checkpointed_step = self.step


@contextlib.contextmanager
def _preserved_rng() -> Iterator[None]:
    """Evaluation may draw random numbers; training must not notice (exact resume, and the
    evaluation schedule never changes the training run)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        yield
    random.setstate(py_state)
    np.random.set_state(np_state)


def _to_device(batch: Any, device: torch.device) -> Any:
    """send_to_device, extended to dataclass batches (it handles tensors, tuples and dicts)."""
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        moved = {
            f.name: _to_device(getattr(batch, f.name), device) for f in dataclasses.fields(batch)
        }
        return dataclasses.replace(batch, **moved)
    return send_to_device(batch, device)
