"""worldsim.train: the shared training driver, on a toy regression model and toy resumable data.

Run as a script (`accelerate launch tests/worldsim/test_driver.py OUT STEPS [CRASH_AT]`), this file
trains the same toy under several processes; the slow tests below do that in subprocesses.
"""

from __future__ import annotations

import csv
import math
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from PIL import Image

from worldsim.io.media import to_uint8_clips, write_grid_png, write_side_by_side_mp4
from worldsim.train import TrainConfig, TrainingDiverged, lr_lambda, train
from worldsim.train.checkpoint import latest_checkpoint, whole_copy

DIM = 4
EPOCH = 3  # batches per epoch: short, so that runs and resumes cross epoch ends
TARGET = torch.linspace(-1, 1, DIM * DIM).reshape(DIM, DIM)


class ToyModel(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, dim: int = DIM) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


@dataclass
class ToyBatch:
    x: torch.Tensor  # (b, DIM)
    y: torch.Tensor  # (b, DIM)
    index: int  # position of this global batch in the data stream


class ToyData:
    """Global batch k is a pure function of (seed, k); each process takes its slice of rows."""

    def __init__(self, batch_size: int, rank: int, world_size: int, seed: int) -> None:
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.pos = 0

    def __iter__(self) -> Iterator[ToyBatch]:
        while True:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.pos)
            x = torch.randn(self.batch_size * self.world_size, DIM, generator=gen)
            rows = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
            index, self.pos = self.pos, self.pos + 1
            yield ToyBatch(x[rows], x[rows] @ TARGET.T, index)
            if self.pos % EPOCH == 0:
                return

    def state_dict(self) -> dict[str, Any]:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pos = state["pos"]


@dataclass
class ToyOutput:
    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]


class Killed(Exception):
    """Stands in for a process killed in the middle of a run."""


@dataclass
class ToyTask:
    noisy: bool = True  # draw from the global torch RNG in every loss (exact resume restores it)
    bad_at: int | None = None  # data index whose loss is multiplied by bad_value
    bad_value: float = math.nan
    crash_at: int | None = None  # data index whose loss raises Killed
    broken_visuals: bool = False  # visualize raises, as a missing video codec would
    dtypes: list[torch.dtype] = field(default_factory=list)  # output dtypes seen in training

    def build_model(self) -> torch.nn.Module:
        return ToyModel()

    def train_batches(self, batch_size: int, rank: int, world_size: int, seed: int) -> ToyData:
        return ToyData(batch_size, rank, world_size, seed)

    def eval_batches(self, batch_size: int) -> list[ToyBatch]:
        x = torch.randn(2 * batch_size, DIM, generator=torch.Generator().manual_seed(99))
        return [ToyBatch(xs, xs @ TARGET.T, -1) for xs in x.split(batch_size)]

    def loss(self, model: torch.nn.Module, batch: ToyBatch) -> ToyOutput:
        if batch.index == self.crash_at:
            raise Killed(f"killed at data index {batch.index}")
        pred = model(batch.x)
        if batch.index >= 0:
            self.dtypes.append(pred.dtype)
        if self.noisy:
            pred = pred + 0.01 * torch.randn_like(pred)
        loss = F.mse_loss(pred.float(), batch.y)
        if batch.index == self.bad_at:
            loss = loss * self.bad_value
        return ToyOutput(loss, {"abs_err": (pred.float() - batch.y).abs().mean()})

    def visualize(self, model: torch.nn.Module, batch: ToyBatch, path_prefix: Path) -> list[Path]:
        def as_clip(v: torch.Tensor) -> np.ndarray:  # (2, DIM) -> (T=2, 2, 2, 3)
            return to_uint8_clips(v[:2].tanh().reshape(2, 1, 2, 2).expand(2, 3, 2, 2))

        if self.broken_visuals:
            raise OSError("no video codec")
        clips = [as_clip(batch.y), as_clip(model(batch.x))]
        png = write_grid_png(clips, path_prefix.with_suffix(".png"))
        return [png, write_side_by_side_mp4(clips, path_prefix.with_suffix(".mp4"), scale=8)]


def toy_config(out: Path, **changes: Any) -> TrainConfig:
    base = TrainConfig(
        out_dir=str(out),
        steps=12,
        batch_size=8,
        lr=0.05,
        warmup_steps=2,
        log_every=1,
        eval_every=4,
        eval_batches=2,
        checkpoint_every=5,
        keep_last=2,
        seed=3,
    )
    return replace(base, **changes)


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def csv_losses(out: Path) -> list[float]:
    rows = csv_rows(out / "train.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, len(rows) + 1))
    return [float(r["loss"]) for r in rows]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return ToyModel.from_pretrained(path).state_dict()


def assert_same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=atol, rtol=0 if atol == 0 else 1e-5)


@pytest.fixture(autouse=True)
def fresh_accelerate_state() -> Iterator[None]:
    # accelerate keeps process-wide state; each run here starts from none, as a new process would.
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_lr_schedule_warms_up_then_decays_to_the_floor() -> None:
    cfg = TrainConfig(steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_lambda(0, cfg) == pytest.approx(0.1)
    assert lr_lambda(4, cfg) == pytest.approx(0.5)
    assert lr_lambda(9, cfg) == pytest.approx(1.0)
    assert lr_lambda(10, cfg) == pytest.approx(1.0)
    assert lr_lambda(60, cfg) == pytest.approx(0.55)  # half-way down the cosine
    assert lr_lambda(110, cfg) == pytest.approx(0.1)
    assert lr_lambda(500, cfg) == pytest.approx(0.1)
    decay = [lr_lambda(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))
    assert lr_lambda(0, replace(cfg, warmup_steps=0)) == pytest.approx(1.0)


def test_bad_options_are_named() -> None:
    with pytest.raises(ValueError, match="mixed_precision.*'fp16'"):
        TrainConfig(mixed_precision="fp16").validate()
    with pytest.raises(ValueError, match="batch_size must be >= 1.*min_lr_ratio"):
        TrainConfig(batch_size=0, min_lr_ratio=2.0).validate()


def test_toy_model_trains_logs_and_exports(tmp_path: Path) -> None:
    cfg = toy_config(tmp_path, steps=60, lr=0.1, eval_every=20, checkpoint_every=20, warmup_steps=5)
    result = train(ToyTask(), cfg)

    assert result.step == 60 and result.stop_reason == "steps" and len(result.losses) == 60
    assert np.mean(result.losses[-5:]) < 0.02 * np.mean(result.losses[:5])
    rows = csv_rows(tmp_path / "train.csv")
    assert csv_losses(tmp_path) == pytest.approx(result.losses, rel=1e-6)
    for row in rows:
        assert float(row["lr"]) == pytest.approx(cfg.lr * lr_lambda(int(row["step"]) - 1, cfg))
    assert {"grad_norm", "abs_err", "steps_per_s"} <= rows[0].keys()
    assert [int(r["step"]) for r in csv_rows(tmp_path / "eval.csv")] == [20, 40, 60]
    for name in ("step-00000020.png", "step-00000020.mp4", "step-00000060.png"):
        assert (tmp_path / "visuals" / name).stat().st_size > 0
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["step-00000040", "step-00000060"]  # keep_last=2
    assert result.checkpoint == tmp_path / "checkpoints" / "step-00000060"
    assert_same_weights(result.final_dir, result.checkpoint / "model")
    fitted = weights(result.final_dir)["linear.weight"]
    torch.testing.assert_close(fitted, TARGET, atol=0.15, rtol=0)
    assert "step 60" in result.render()


def test_resume_after_a_crash_repeats_the_uninterrupted_run_exactly(tmp_path: Path) -> None:
    # log_every=2 puts the checkpoint at step 5 in the middle of a log row.
    full = train(ToyTask(), toy_config(tmp_path / "full", log_every=2))
    cfg = toy_config(tmp_path / "crashed", log_every=2)
    with pytest.raises(Killed):
        train(ToyTask(crash_at=8), cfg)  # during step 9; the last checkpoint is step 5
    assert latest_checkpoint(tmp_path / "crashed" / "checkpoints") is not None
    resumed = train(ToyTask(), cfg)

    assert resumed.losses == full.losses[5:]  # bitwise
    rows_full, rows_resumed = (csv_rows(tmp_path / d / "train.csv") for d in ("full", "crashed"))
    for row in rows_full + rows_resumed:
        del row["steps_per_s"]
    assert rows_resumed == rows_full  # one row per log step, with the same means
    assert_same_weights(resumed.final_dir, full.final_dir)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(ToyTask(), replace(cfg, resume=False))


@pytest.mark.parametrize("bad_value", [math.nan, math.inf])
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, bad_value: float
) -> None:
    cfg = toy_config(tmp_path)
    with pytest.raises(TrainingDiverged, match=r"at step 8.*step-00000005"):
        train(ToyTask(bad_at=7, bad_value=bad_value), cfg)

    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000005"]
    assert not (tmp_path / "final").exists()
    for tensor in weights(tmp_path / "checkpoints" / "step-00000005" / "model").values():
        assert torch.isfinite(tensor).all()
    resumed = train(ToyTask(), cfg)
    assert resumed.step == 12 and all(map(math.isfinite, resumed.losses))


def test_a_checkpoint_killed_while_writing_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = train(ToyTask(), toy_config(tmp_path / "full"))
    real_save = Accelerator.save_state

    def dies_writing_step_10(self: Accelerator, output_dir: str, **kwargs: Any) -> Any:
        real_save(self, output_dir, **kwargs)
        if output_dir.endswith("step-00000010.tmp"):
            raise Killed("killed while writing a checkpoint")

    monkeypatch.setattr(Accelerator, "save_state", dies_writing_step_10)
    cfg = toy_config(tmp_path / "run")
    with pytest.raises(Killed):
        train(ToyTask(), cfg)
    monkeypatch.undo()
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-00000005", "step-00000010.tmp"]
    assert latest_checkpoint(root) == root / "step-00000005"

    resumed = train(ToyTask(), cfg)
    assert resumed.losses == full.losses[5:]
    assert sorted(p.name for p in root.iterdir()) == ["step-00000010", "step-00000012"]


def test_time_budget_stops_saves_and_the_run_continues_later(tmp_path: Path) -> None:
    cfg = toy_config(tmp_path, time_budget_min=1e-9)  # over budget after the first step
    stopped = train(ToyTask(), cfg)
    assert (stopped.step, stopped.stop_reason) == (1, "time_budget")
    assert (
        stopped.checkpoint.name == "step-00000001" and (stopped.final_dir / "config.json").exists()
    )
    finished = train(ToyTask(), replace(cfg, time_budget_min=None))
    assert (finished.step, finished.stop_reason, len(finished.losses)) == (12, "steps", 11)


def test_a_failing_final_evaluation_keeps_the_trained_weights(tmp_path: Path) -> None:
    cfg = toy_config(tmp_path, eval_every=100, checkpoint_every=100)  # one evaluation, at the end
    with pytest.raises(OSError, match="no video codec"):
        train(ToyTask(broken_visuals=True), cfg)
    assert (tmp_path / "final" / "config.json").exists()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000012"]


def test_whole_copy_holds_the_weights_and_leaves_the_rng_alone() -> None:
    model = ToyModel(dim=3)
    state = {k: v + 1 for k, v in model.state_dict().items()}
    torch.manual_seed(5)
    copy = whole_copy(model, state)
    after_copy = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(after_copy, torch.rand(1))  # the copy's initialisation drew from a fork
    assert copy is not model and not copy.training and copy.config["dim"] == 3
    for key, value in copy.state_dict().items():
        assert torch.equal(value, state[key])


def test_bf16_autocast_on_cpu(tmp_path: Path) -> None:
    task = ToyTask()
    result = train(task, toy_config(tmp_path, steps=3, mixed_precision="bf16"))
    assert set(task.dtypes) == {torch.bfloat16}
    assert all(map(math.isfinite, result.losses))
    assert weights(result.final_dir)["linear.weight"].dtype == torch.float32


def test_grid_and_video_writers(tmp_path: Path) -> None:
    dark, bright = (np.full((3, 6, 5, 3), v, np.uint8) for v in (10, 240))
    png = write_grid_png([dark, bright], tmp_path / "grid.png", border=2)
    grid = np.asarray(Image.open(png))
    assert grid.shape == (2 * (6 + 4), 3 * (5 + 4), 3)  # rows = clips, columns = frames
    assert grid[2, 2, 0] == 10 and grid[12, 2, 0] == 240 and grid[0, 0, 0] == 255

    mp4 = write_side_by_side_mp4([dark, bright], tmp_path / "video.mp4", fps=4, scale=2)
    with av.open(str(mp4)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 3 and frames[0].shape == (12, 20, 3)
    assert frames[0][:, :8].mean() < 40 and frames[0][:, 12:].mean() > 210

    with pytest.raises(ValueError, match="share one"):
        write_grid_png([dark, bright[:2]], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="uint8"):
        write_grid_png([dark.astype(np.float32)], tmp_path / "bad.png")
    pixels = to_uint8_clips(torch.tensor([-1.0, 0.0, 1.0]).reshape(1, 3, 1, 1).expand(1, 3, 1, 3))
    assert pixels.shape == (1, 1, 3, 3) and pixels[0, 0, 0].tolist() == [0, 128, 255]


# ---- several processes: `accelerate launch` subprocesses running this file as a script ----


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(launch_args: list[str], script_args: list[str]) -> subprocess.Popen[str]:
    # accelerate's `--cpu` launcher starts one process unless MPI is configured; `--multi_gpu`
    # goes through torch.distributed.run, and ACCELERATE_USE_CPU makes it gloo on CPU.
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", *launch_args]
    pipe, both = subprocess.PIPE, subprocess.STDOUT
    return subprocess.Popen(
        [*cmd, __file__, *script_args], env=env, stdout=pipe, stderr=both, text=True
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()  # a hung collective must not outlive the test
        raise
    return proc.returncode, out


def test_init_from_starts_a_fresh_run_from_saved_weights(tmp_path: Path) -> None:
    first = train(ToyTask(noisy=False), toy_config(tmp_path / "a", steps=6))
    tuned = toy_config(tmp_path / "b", steps=2, init_from=str(first.final_dir))
    second = train(ToyTask(noisy=False), tuned)
    # Its first loss is the first run's final model on the first batch (drawn from the seed).
    batch = next(iter(ToyData(8, 0, 1, seed=3)))
    start = ToyTask(noisy=False).loss(ToyModel.from_pretrained(first.final_dir), batch)
    assert second.losses[0] == pytest.approx(float(start.loss), rel=1e-5)
    assert second.losses[0] < 0.8 * first.losses[0]
    with pytest.raises(FileNotFoundError, match="no save_pretrained folder"):
        train(ToyTask(), toy_config(tmp_path / "d", init_from=str(tmp_path / "none")))
    ToyModel(dim=3).save_pretrained(tmp_path / "small")
    with pytest.raises(ValueError, match=r"linear.weight is \(3, 3\), the model's \(4, 4\)"):
        train(ToyTask(), toy_config(tmp_path / "e", init_from=str(tmp_path / "small")))


@pytest.mark.slow
def test_two_processes_match_one_and_resume_exactly(tmp_path: Path) -> None:
    single = train(ToyTask(noisy=False), toy_config(tmp_path / "one", steps=8, checkpoint_every=3))
    two = tmp_path / "two"
    args = ["--num_processes", "2", "--num_machines", "1", "--main_process_port", str(_free_port())]
    code, log = _finish(_launch(args, [str(two), "8", "4"]))  # crash in step 5
    assert code != 0 and "Killed" in log, log
    assert latest_checkpoint(two / "checkpoints") == two / "checkpoints" / "step-00000003"
    code, log = _finish(_launch(args, [str(two), "8"]))
    assert code == 0, log
    names = {p.name for p in (two / "checkpoints" / "step-00000006").iterdir()}
    assert {"process_state_0.pt", "process_state_1.pt"} <= names
    # Same global batches; only the order of floating-point sums differs.
    assert csv_losses(two) == pytest.approx(single.losses, rel=1e-5, abs=1e-7)
    assert_same_weights(two / "final", single.final_dir, atol=1e-5)


@pytest.mark.slow
def test_two_machines_on_loopback_match_one_process(tmp_path: Path) -> None:
    single = train(ToyTask(noisy=False), toy_config(tmp_path / "one", steps=6))
    out, port = tmp_path / "two_machines", str(_free_port())
    common = ["--num_machines", "2", "--num_processes", "2", "--main_process_ip", "127.0.0.1"]
    procs = [
        _launch(
            [*common, "--main_process_port", port, "--machine_rank", str(rank)], [str(out), "6"]
        )
        for rank in (0, 1)
    ]
    results = [_finish(p) for p in procs]
    for code, log in results:
        assert code == 0, log
    assert csv_losses(out) == pytest.approx(single.losses, rel=1e-5, abs=1e-7)


if __name__ == "__main__":
    # accelerate launch test_driver.py OUT STEPS [CRASH_AT]: the toy run of the slow tests above.
    out_dir, steps, *crash = sys.argv[1:]
    task = ToyTask(noisy=False, crash_at=int(crash[0]) if crash else None)
    train(task, toy_config(Path(out_dir), steps=int(steps), checkpoint_every=3))
