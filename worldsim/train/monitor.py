"""What a person watches while a model trains: metric logs. `RunLog` writes one CSV per split
(`train.csv`, `eval.csv`) on every log step, and the same scalars to TensorBoard when it is
installed. Tasks draw their pictures with worldsim.io.media.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from worldsim.io.files import atomic_path


class RunLog:
    """Scalar metrics per step to `<out>/<split>.csv` and TensorBoard (`<out>/tensorboard`).

    Build it on the main process only. `resume_step` drops rows logged after the checkpoint a run
    resumes from, so a crash-and-resume leaves one row per step, as an uninterrupted run would.
    """

    def __init__(self, out_dir: Path, resume_step: int = 0) -> None:
        self.out_dir = out_dir
        self._headers: dict[str, list[str]] = {}
        for split in ("train", "eval"):
            self._truncate(self._csv(split), resume_step)
        self._tb: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # TensorBoard is optional; the CSV always has everything
            return
        # purge_step hides events a crashed run wrote past the checkpoint it resumes from.
        purge = resume_step + 1 if resume_step else None
        self._tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=purge)

    def write(self, split: str, step: int, metrics: Mapping[str, float]) -> None:
        row = {"step": step, **metrics}
        path = self._csv(split)
        header = self._header(path)
        if not header or set(row) - set(header):
            # First row, or a metric appeared: rewrite the file under the wider header.
            header = header + sorted(set(row) - set(header)) if header else list(row)
            self._rewrite(path, header, self._rows(path))
            self._headers[split] = header
        with path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=header).writerow(row)
        if self._tb is not None:
            for key, value in metrics.items():
                self._tb.add_scalar(f"{split}/{key}", value, global_step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()

    def _csv(self, split: str) -> Path:
        return self.out_dir / f"{split}.csv"

    def _header(self, path: Path) -> list[str]:
        split = path.stem
        if split not in self._headers and path.is_file():
            with path.open(newline="") as f:
                self._headers[split] = next(csv.reader(f), [])
        return self._headers.get(split, [])

    def _truncate(self, path: Path, resume_step: int) -> None:
        if path.is_file():
            kept = [r for r in self._rows(path) if int(r["step"]) <= resume_step]
            self._rewrite(path, self._header(path), kept)

    @staticmethod
    def _rows(path: Path) -> list[dict[str, str]]:
        if not path.is_file():
            return []
        with path.open(newline="") as f:
            return list(csv.DictReader(f))

    @staticmethod
    def _rewrite(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
        with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
