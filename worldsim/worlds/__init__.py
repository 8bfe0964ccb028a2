"""Worlds that ship inside the package, ready to play without a download.

`shipped_world()` is the folder of the default world (what `worldsim play` and `worldsim rollout`
use when given no world), after checking every file against the sha256 pinned in its
`SHA256SUMS`: a damaged or half-copied install fails with a message naming the file, instead of
playing garbage. A world folder is the format of simulator/world/checkpoint.py; shipped worlds
add `starts/` (start frames of held-out levels, described in `starts/starts.json`).

The CoinRun world is the packed release of checkpoints/delta_coinrun_still and
checkpoints/dynamics_delta_coinrun (where their recipes and training records live): the delta
design (tokenizer/delta.py), where a convolutional renderer draws each frame from the previous
two by a learned warp and a residual, told only 4 tokens of change that the dynamics model
predicts from the keys. Trained on CoinRun's full visual distribution, steered by the game's 6
effects (LEFT, LEFT+UP, NOOP, UP, RIGHT, RIGHT+UP) and sampled at temperature 0.5; its dynamics
is trained for classifier-free guidance on the keys, which `world.json` leaves off (1) because
it halves the frame rate. Its start frames are from held-out levels, ten of all themes and two
of the single `easy` theme (README, "Evaluation").

The CarRacing world ("carracing": `worldsim play --world carracing`) is the packed release of
checkpoints/delta_carracing_controls_flow and checkpoints/dynamics_delta_carracing_controls_flow:
the same delta design, steered by continuous [steer, gas, brake], with a renderer that is told
the controls and moves the view by them; trained on 1000 tracks driven along the road
(data_pipeline/driving.py). Its start frames are the first frames of 8 held-out tracks and
mid-drive views of 8 more.
"""

from __future__ import annotations

from pathlib import Path

from worldsim.io.files import file_sha256

WORLDS = Path(__file__).parent
DEFAULT_WORLD = "coinrun"
SUMS_FILE = "SHA256SUMS"


def shipped_world(name: str = DEFAULT_WORLD) -> Path:
    """The folder of shipped world `name`, its files checked against their pinned sha256."""
    folder = WORLDS / name
    sums = folder / SUMS_FILE
    if not sums.is_file():
        known = sorted(p.name for p in WORLDS.iterdir() if (p / SUMS_FILE).is_file())
        raise FileNotFoundError(f"no shipped world {name!r}; shipped: {', '.join(known)}")
    for line in sums.read_text().splitlines():
        expected, relative = line.split(maxsplit=1)
        path = folder / relative
        if not path.is_file():
            raise FileNotFoundError(
                f"the shipped world {name!r} is incomplete: {relative} is missing; reinstall "
                "worldsim (pip install -e .)"
            )
        if file_sha256(path) != expected:
            raise ValueError(
                f"the shipped world {name!r} is damaged: {relative} does not match its pinned "
                f"sha256 {expected[:12]}...; reinstall worldsim (pip install -e .)"
            )
    return folder


def write_sums(folder: Path) -> Path:
    """Pin every file of a world folder (run after replacing a shipped world's files)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != SUMS_FILE)
    lines = [f"{file_sha256(p)}  {p.relative_to(folder).as_posix()}" for p in files]
    (folder / SUMS_FILE).write_text("\n".join(lines) + "\n")
    return folder / SUMS_FILE
