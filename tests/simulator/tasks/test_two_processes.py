"""The latent action model and the dynamics model train under `accelerate launch` with two CPU
processes (gloo), as the tokenizer does (tests/worldsim/test_driver.py): each process keeps its
own loader position in the checkpoint, a rerun resumes, and the final export loads."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.models.dynamics import DynamicsModel
from simulator.models.lam import LatentActionModel
from tests.simulator.models.test_dynamics import write_token_shards
from tests.simulator.models.test_lam import write_toy_shards

MODELS = {"lam": LatentActionModel, "dynamics": DynamicsModel}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch_train(model: str, overrides: list[str]) -> tuple[int, str]:
    # --multi_gpu goes through torch.distributed.run; ACCELERATE_USE_CPU makes it gloo on CPU.
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    launch = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--main_process_port",
              str(_free_port()), "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch, "-m", "commands"]
    cmd += ["train", model, "--config", "tiny", *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(MODELS))
def test_two_processes_train_resume_and_export(tmp_path: Path, model: str) -> None:
    if model == "lam":
        shards = write_toy_shards(tmp_path / "shards")
    else:
        shards = str(write_token_shards(tmp_path / "shards"))
    run = tmp_path / "run"
    common = [f"data.shards={shards}", f"eval_shards={shards}", "eval_split=train",
              f"train.out_dir={run}", "train.batch_size=4", "train.checkpoint_every=2",
              "train.eval_every=0", "train.log_every=1", "data.num_workers=0"]  # fmt: skip
    code, log = _launch_train(model, [*common, "train.steps=2"])
    assert code == 0, log[-3000:]
    names = {p.name for p in (run / "checkpoints" / "step-00000002").iterdir()}
    assert {"process_state_0.pt", "process_state_1.pt"} <= names
    code, log = _launch_train(model, [*common, "train.steps=4"])
    assert code == 0, log[-3000:]
    rows = (run / "train.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3, 4]  # resumed at 2, not restarted
    assert MODELS[model].from_pretrained(run / "final") is not None
