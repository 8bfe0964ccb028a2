"""`worldsim data ...` via `commands.main.main`: exit codes, error messages, a tiny end-to-end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from commands.main import main
from data_pipeline.info import CAPTION


@pytest.mark.parametrize(
    "flags, problem",
    [
        (["--size", "0"], "--size must be >= 1, got 0"),
        (["--frames", "1"], "--frames must be >= 2"),
        (["--fps", "0"], "--fps must be > 0, got 0.0"),
    ],
)
def test_bad_shard_option_exits_2_naming_it(
    flags: list[str], problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["data", "shard", "procgen:coinrun", "--out", str(tmp_path / "o"), *flags])
    assert code == 2
    assert problem in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_missing_input_exits_2_naming_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no_such_clip.mp4"
    assert main(["data", "shard", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert str(missing) in capsys.readouterr().err


def test_info_on_a_folder_without_shards_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "info", str(tmp_path)]) == 2
    assert "has no manifest.json" in capsys.readouterr().err
    assert main(["data", "info", str(tmp_path / "absent")]) == 2
    assert "shard folder not found" in capsys.readouterr().err


def test_shard_then_info_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "coinrun"
    flags = ["--frames", "8", "--stride", "8", "--size", "32", "--max-steps", "48"]
    flags += ["--episodes", "2", "--units-per-shard", "1", "--workers", "1"]
    assert main(["data", "shard", "procgen:coinrun", "--out", str(out), *flags]) == 0
    summary = capsys.readouterr().out
    assert "shards: 2 written, 0 skipped" in summary

    entry = json.loads((out / "manifest.json").read_text())["splits"]["train"]
    assert entry["frame_shape"] == [8, 32, 32, 3]
    assert entry["level_seeds"] is not None
    assert f"clips: {entry['clips']} " in summary and entry["content_hash"] in summary

    sheet = tmp_path / "sheet.png"
    assert main(["data", "info", str(out), "--sheet", str(sheet)]) == 0
    report = capsys.readouterr().out
    assert f"split train: {len(entry['shards'])} shards, {entry['clips']} clips" in report
    assert "100% of clips have them" in report
    with Image.open(sheet) as img:
        margin = img.size[0] - 8 * 32  # the column of clip labels
        assert 0 < margin < 300 and img.size[1] == min(4, entry["clips"]) * (CAPTION + 32)


def test_help_describes_the_command_in_whole_sentences(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    description = " ".join(capsys.readouterr().out.split("\n\n")[1].split())
    assert description.startswith("worldsim: ") and description.endswith("in the browser.")
