"""`dataset_info`: numbers read back from shards, the contact sheet, and clear errors."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_pipeline import shard_job
from data_pipeline.config import ShardConfig
from data_pipeline.info import CAPTION, dataset_info
from data_pipeline.manifest import MANIFEST
from data_pipeline.schema import ActionSpace, Clip
from data_pipeline.shard_job import run_shard_job
from data_pipeline.sources import WorkUnit

SPACE = ActionSpace("discrete", n=3, names=("left", "right", "jump"))
T, SIZE = 6, 8


@dataclass
class FlatUnit:
    """Clips of flat grey frames whose level encodes (unit, clip, t), so sheet tiles can be
    traced back to their clip; actions cycle 0, 1, 2 (each used T/3 times per clip)."""

    uid: str
    number: int
    with_actions: bool = True

    def action_space(self) -> ActionSpace | None:
        return SPACE if self.with_actions else None

    def clips(self, cfg: ShardConfig, stats: Counter[str]) -> Iterator[Clip]:
        for c in range(2):
            levels = (100 * self.number + 40 * c + 5 * np.arange(T)) % 256
            frames = np.broadcast_to(levels[:, None, None, None], (T, SIZE, SIZE, 3))
            actions = np.arange(T) % 3 if self.with_actions else None
            yield Clip(frames.astype(np.uint8), actions, {"fps": 10.0})


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A shard folder with split train (3 units, actions) and split test (1 unit, none)."""
    train: list[WorkUnit] = [FlatUnit(f"u{i}", i) for i in range(3)]
    test: list[WorkUnit] = [FlatUnit("v0", 2, with_actions=False)]
    monkeypatch.setattr(
        shard_job, "resolve_sources", lambda cfg: train if cfg.split == "train" else test
    )
    for split in ("train", "test"):
        cfg = ShardConfig(
            sources=["x"],
            out=str(tmp_path),
            split=split,
            frames=T,
            size=SIZE,
            units_per_shard=2,
            workers=1,
        )
        run_shard_job(cfg)
    return tmp_path


def test_info_counts_durations_and_actions(folder: Path) -> None:
    report = dataset_info(folder)
    test, train = report.splits  # manifest splits are sorted by name
    assert (train.name, train.shards, train.clips, train.frames) == ("train", 2, 6, 6 * T)
    assert train.duration_s == pytest.approx(6 * T / 10.0)
    assert train.resolutions == {f"{SIZE}x{SIZE}": 6}
    assert train.clips_with_actions == 6
    assert train.action_counts == {"left": 12, "right": 12, "jump": 12}
    assert (test.clips, test.clips_with_actions, test.action_counts) == (2, 0, {})
    assert report.clips == 8

    text = report.render()
    for part in ("8 clips", "split train: 2 shards, 6 clips", "100% of clips", "left 33.3%", "0%"):
        assert part in text


def test_contact_sheet_rows_are_evenly_spaced_clips(folder: Path, tmp_path: Path) -> None:
    sheet_path = tmp_path / "sheets" / "s.png"
    report = dataset_info(folder, sheet_path=sheet_path)
    assert report.sheet_path == str(sheet_path)
    with Image.open(sheet_path) as img:
        margin = img.size[0] - T * SIZE  # the labels' column
        assert img.size == report.sheet_size == (margin + T * SIZE, 4 * (CAPTION + SIZE))
        pixels = np.asarray(img.convert("RGB"))
    assert 40 < margin < 200  # wide enough for "train/u1-000001"
    # Folder order is test (v0: 2 clips) then train (u0..u2: 2 each): picks 0, 2, 5, 7.
    firsts = [(2, 0), (0, 0), (1, 1), (2, 1)]  # (unit number, clip) of each row
    for row, (number, c) in enumerate(firsts):
        top = row * (CAPTION + SIZE) + CAPTION
        assert (pixels[top : top + SIZE, :margin] < 128).any(), "row label drawn"
        for col in range(T):
            level = 100 * number + 40 * c + 5 * col
            assert pixels[top + 3, margin + col * SIZE + 3, 0] == level % 256
    assert not (folder / "contact_sheet.png").exists()
    assert dataset_info(folder).sheet_path == str(folder / "contact_sheet.png")


def test_info_errors_name_the_problem(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="shard folder not found"):
        dataset_info(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="has no manifest.json"):
        dataset_info(empty)

    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["splits"]["train"]["shards"][0]["count"] += 1
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="train-000000.tar holds 4 clips but manifest.json says 5"):
        dataset_info(folder)
    (folder / "train-000000.tar").unlink()
    with pytest.raises(FileNotFoundError, match="train-000000.tar is listed in .* but missing"):
        dataset_info(folder)
