"""Files readers can trust. Atomic writes: every file and folder is written under a temporary
name and renamed over its final name when complete, so a reader (or a rerun after a crash) sees
the old version or the new one, never a torn one; leftover temporaries end in `PARTIAL`, which
resumable jobs delete. Checksums: `file_sha256` pins shards, weights and shipped worlds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PARTIAL = ".partial"  # suffix of files being written; a rerun deletes leftovers


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; it replaces `path` when the block ends
    normally and is deleted when the block raises. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}{PARTIAL}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically, flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def write_json(path: str | os.PathLike[str], obj: Any, indent: int = 1) -> Path:
    text = json.dumps(obj, indent=indent, sort_keys=True) + "\n"
    return write_atomic(path, text.encode())


def replace_dir(src: Path, dst: Path) -> None:
    """Rename folder `src` to `dst`; an existing `dst` is moved aside first and deleted only
    afterwards, so `dst` is never missing a complete version for longer than two renames."""
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
