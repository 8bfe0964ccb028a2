"""worldsim.io: atomic writes leave the old file or the new one, never a torn one; media writers
write what they are given."""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image

from worldsim.io.files import PARTIAL, atomic_path, file_sha256, replace_dir, write_json
from worldsim.io.media import upscale, write_grid_png, write_video


def test_a_failed_write_keeps_the_old_file_and_leaves_no_partial(tmp_path) -> None:
    path = tmp_path / "sub" / "report.json"
    write_json(path, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == '{\n "a": 1\n}\n'
    assert not list(tmp_path.rglob(f"*{PARTIAL}"))


def test_replace_dir_swaps_whole_folders(tmp_path) -> None:
    old, new = tmp_path / "world", tmp_path / "new"
    old.mkdir()
    (old / "a").write_text("old")
    new.mkdir()
    (new / "b").write_text("new")
    replace_dir(new, old)
    assert [p.name for p in tmp_path.iterdir()] == ["world"]
    assert [p.name for p in old.iterdir()] == ["b"]
    assert len(file_sha256(old / "b")) == 64


def test_videos_and_grids_hold_every_frame_enlarged_crisply(tmp_path) -> None:
    clip = np.random.default_rng(0).integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    assert np.array_equal(upscale(clip, 3)[:, ::3, ::3], clip)
    with Image.open(write_video(clip, tmp_path / "c.gif", fps=10, scale=2)) as gif:
        assert gif.n_frames == 5 and gif.size == (12, 12)
    with av.open(str(write_video(clip, tmp_path / "c.mp4", scale=2))) as video:
        frames = [f.to_ndarray(format="rgb24") for f in video.decode(video=0)]
    assert len(frames) == 5 and frames[0].shape == (12, 12, 3)
    with Image.open(write_grid_png([clip, clip], tmp_path / "g.png", border=1)) as grid:
        assert grid.size == (5 * 8, 2 * 8)
    with pytest.raises(ValueError, match="must end in .mp4 or .gif"):
        write_video(clip, tmp_path / "c.avi")
    with pytest.raises(ValueError, match="T >= 1"):
        write_video(clip[:0], tmp_path / "e.gif")
