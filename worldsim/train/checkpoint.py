"""Atomic training checkpoints on top of `accelerate`'s save_state/load_state.

Layout of `<out>/checkpoints/step-00001000/`:
    model.safetensors, optimizer.bin, scheduler.bin, random_states_<rank>.pkl   (accelerate)
    process_state_<rank>.pt   each process's data position and unlogged metric sums
    model/                    `save_pretrained` export, loadable without the driver
    trainer_state.json        step, process count, config; written last

Every process writes into `step-XXXXXXXX.tmp/`; once all have finished, the main process renames
it. A reader therefore never sees a half-written checkpoint: a `.tmp` left by a killed run is
ignored and removed by the next save. Across machines the output folder must be shared storage.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator

from worldsim.io.files import replace_dir

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d{8})$")


class Pretrained(Protocol):
    """What the driver needs to copy and export a model (diffusers ModelMixin has it)."""

    config: Any

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> Any: ...


@dataclass(frozen=True)
class Restored:
    path: Path
    step: int
    process_state: dict[str, Any]  # what this process passed to save_checkpoint


def checkpoint_path(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def latest_checkpoint(root: Path) -> Path | None:
    """The complete checkpoint with the highest step under `root`, or None."""
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return max(done, key=lambda p: p.name, default=None)


def save_checkpoint(
    accelerator: Accelerator,
    root: Path,
    step: int,
    model: Pretrained | None,  # what the main process exports; None on the others
    process_state: dict[str, Any],
    meta: dict[str, Any],
    keep_last: int,
) -> Path:
    """Collective: every process must call it, each with its own `process_state` (data loader
    position...). Returns the final checkpoint folder."""
    final = checkpoint_path(root, step)
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob("step-*.*"):  # leftovers of killed saves or replacements
            shutil.rmtree(stale)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    torch.save(process_state, tmp / f"process_state_{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        assert model is not None, "the main process must pass the model to export"
        model.save_pretrained(tmp / "model")
        state = {"step": step, "num_processes": accelerator.num_processes, **meta}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        replace_dir(tmp, final)
        _prune(root, keep_last)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: Path) -> Restored:
    """Collective: restores model, optimizer, scheduler and RNG states in place."""
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(f"not a complete checkpoint (no {STATE_FILE}): {path}")
    state = json.loads(state_file.read_text())
    if state["num_processes"] != accelerator.num_processes:
        # Data positions and RNG streams are per process; they cannot be re-split exactly.
        raise ValueError(
            f"checkpoint {path} was written by {state['num_processes']} processes; resume it "
            f"with the same count (this run has {accelerator.num_processes})"
        )
    accelerator.load_state(str(path))
    process_file = path / f"process_state_{accelerator.process_index}.pt"
    # Our own file: trusted, and loader states may hold numpy RNG states.
    process_state = torch.load(process_file, map_location="cpu", weights_only=True)
    return Restored(path=path, step=int(state["step"]), process_state=process_state)


def load_weights(model: torch.nn.Module, path: str | os.PathLike[str]) -> None:
    """Copy into `model` the weights of the save_pretrained folder `path` (same class, same
    shapes): ValueError naming the first mismatches otherwise."""
    src = Path(path)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"init_from: no save_pretrained folder (config.json) at {src}")
    source = type(model).from_pretrained(src)  # type: ignore[attr-defined]
    theirs, ours = source.state_dict(), model.state_dict()
    problems = [f"{k} missing" for k in ours.keys() - theirs.keys()]
    problems += [f"{k} unexpected" for k in theirs.keys() - ours.keys()]
    problems += [
        f"{k} is {tuple(theirs[k].shape)}, the model's {tuple(v.shape)}"
        for k, v in ours.items()
        if k in theirs and theirs[k].shape != v.shape
    ]
    if problems:
        listed = "; ".join(sorted(problems)[:5])
        raise ValueError(f"init_from {src} does not fit the model: {listed}")
    model.load_state_dict(theirs)


def whole_copy(model: Pretrained, state_dict: dict[str, torch.Tensor]) -> Any:
    """A fresh model of `model`'s class and config holding `state_dict`, in eval mode. Its random
    initialisation draws from a forked generator, so copying never shifts a run's random stream."""
    with torch.random.fork_rng(devices=[]):
        copy = type(model).from_config(model.config)  # type: ignore[attr-defined]
    copy.load_state_dict(state_dict)
    return copy.eval()


def export_pretrained(model: Pretrained, dst: Path) -> Path:
    """`save_pretrained` into `dst`, replacing an older export only once the new one is complete."""
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    replace_dir(tmp, dst)
    return dst


def _prune(root: Path, keep_last: int) -> None:
    done = sorted(p for p in root.iterdir() if _NAME.match(p.name))
    for path in done[: max(len(done) - keep_last, 0)]:
        shutil.rmtree(path)
