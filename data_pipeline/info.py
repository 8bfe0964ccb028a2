"""`worldsim data info`: what a shard folder holds, and a contact sheet to eyeball it.

Reads every sample once (counts come from the data, not only from the manifest, so a truncated
or swapped shard shows up as an error) and keeps a few evenly spaced clips for the sheet: one
row per clip (captioned with its split and key), its frames subsampled evenly across the columns
(each marked with its frame index).
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm
from webdataset.tariterators import group_by_keys, tar_file_expander

from data_pipeline.manifest import MANIFEST, read_manifest
from data_pipeline.schema import Clip, decode_sample
from worldsim.io.files import write_atomic

SHEET_ROWS = 4  # sample clips on the contact sheet
SHEET_COLS = 8  # frames per clip on the sheet (fewer when clips are shorter)
CAPTION = 12  # pixels above each row of frames, for the frame indices
HIST_BINS = 10  # bins of each continuous control's histogram
BARS = " ▁▂▃▄▅▆▇█"


@dataclass
class SplitInfo:
    name: str
    shards: int
    clips: int = 0
    frames: int = 0
    duration_s: float = 0.0  # sum over clips of frames / fps
    resolutions: dict[str, int] = field(default_factory=dict)  # "HxW" -> clips
    fps: float | list[float] | None = None
    clips_with_actions: int = 0
    action_space: dict[str, Any] | None = None
    action_counts: dict[str, int] = field(default_factory=dict)  # discrete: name -> steps
    # Continuous: control name -> (low, high, counts in HIST_BINS equal bins over [low, high]).
    control_histograms: dict[str, tuple[float, float, list[int]]] = field(default_factory=dict)
    on_road: float | None = None  # driving clips: share of frames with a wheel on the track

    def render(self) -> str:
        res = ", ".join(f"{r} ({n})" for r, n in self.resolutions.items()) or "-"
        lines = [
            f"split {self.name}: {self.shards} shards, {self.clips} clips, {self.frames} frames, "
            f"{self.duration_s:.1f} s at fps {self.fps}; resolutions {res}"
        ]
        share = self.clips_with_actions / self.clips if self.clips else 0.0
        space = self.action_space or {}
        kind = f"{space.get('type')} n={space['n']}" if "n" in space else space.get("type")
        shape = f" shape={space['shape']}" if "shape" in space else ""
        lines.append(f"  actions: {share:.0%} of clips have them; space {kind}{shape}")
        total = sum(self.action_counts.values())
        if total:
            freq = ", ".join(f"{k} {v / total:.1%}" for k, v in self.action_counts.items())
            lines.append(f"  action frequency: {freq}")
        for name, (low, high, counts) in self.control_histograms.items():
            top = max(counts) or 1
            bars = "".join(BARS[round(8 * c / top)] for c in counts)
            lines.append(f"  {name} {low:g}..{high:g} |{bars}| ({HIST_BINS} equal bins)")
        if self.on_road is not None:
            lines.append(f"  on the road: {self.on_road:.1%} of frames")
        return "\n".join(lines)


@dataclass
class InfoReport:
    dir: str
    splits: list[SplitInfo]
    sheet_path: str | None  # None when the folder holds no clip
    sheet_size: tuple[int, int] | None  # (width, height) in pixels

    @property
    def clips(self) -> int:
        return sum(s.clips for s in self.splits)

    def render(self) -> str:
        frames = sum(s.frames for s in self.splits)
        seconds = sum(s.duration_s for s in self.splits)
        lines = [f"{self.dir}: {self.clips} clips, {frames} frames, {seconds:.1f} s"]
        lines += [s.render() for s in self.splits]
        if self.sheet_path and self.sheet_size:
            w, h = self.sheet_size
            lines.append(f"contact sheet: {self.sheet_path} ({w}x{h})")
        return "\n".join(lines)


def _samples(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as stream:
        yield from group_by_keys(tar_file_expander([{"url": str(path), "stream": stream}]))


def _add_clip(
    info: SplitInfo, clip: Clip, counts: Counter[int], controls: list[np.ndarray]
) -> None:
    t, h, w, _ = clip.frames.shape
    info.clips += 1
    info.frames += t
    fps = clip.meta.get("fps", info.fps if isinstance(info.fps, (int, float)) else None)
    if fps:
        info.duration_s += t / float(fps)
    info.resolutions[f"{h}x{w}"] = info.resolutions.get(f"{h}x{w}", 0) + 1
    if clip.actions is not None:
        info.clips_with_actions += 1
        if clip.actions.ndim == 1:
            counts.update(clip.actions.tolist())
        else:
            controls.append(clip.actions.reshape(t, -1))


def _histograms(
    space: dict[str, Any] | None, controls: list[np.ndarray]
) -> dict[str, tuple[float, float, list[int]]]:
    """Each continuous control's histogram over its observed range, rounded out to integers
    (steer -1..1, gas 0..1)."""
    if not controls:
        return {}
    values = np.concatenate(controls)
    names = list((space or {}).get("names") or [f"control {i}" for i in range(values.shape[1])])
    out = {}
    for i, name in enumerate(names[: values.shape[1]]):
        low, high = float(np.floor(values[:, i].min())), float(np.ceil(values[:, i].max()))
        high = high if high > low else low + 1
        counts, _ = np.histogram(values[:, i], bins=HIST_BINS, range=(low, high))
        out[name] = (low, high, counts.tolist())
    return out


def _named_counts(space: dict[str, Any] | None, counts: Counter[int]) -> dict[str, int]:
    if not space or space.get("type") != "discrete":
        return {}
    names = space.get("names") or [str(i) for i in range(space["n"])]
    return {names[i] if i < len(names) else str(i): counts[i] for i in sorted(counts)}


def _scan_split(
    root: Path, name: str, entry: dict[str, Any], picks: set[int], first: int
) -> tuple[SplitInfo, dict[int, tuple[str, Clip]]]:
    """Read one split; return its stats and the clips whose folder-wide index is in `picks`."""
    info = SplitInfo(name, len(entry["shards"]), fps=entry.get("fps"))
    info.action_space = entry.get("action_space")
    counts: Counter[int] = Counter()
    controls: list[np.ndarray] = []
    on_road = [0.0, 0]  # frames on the road, frames of clips that say
    kept: dict[int, tuple[str, Clip]] = {}
    for shard in tqdm(
        entry["shards"], desc=f"info {name}", unit="shard", leave=False, disable=None
    ):
        path = root / shard["name"]
        if not path.is_file():
            raise FileNotFoundError(f"{path} is listed in {root / MANIFEST} but missing")
        n = 0
        for sample in _samples(path):
            clip = decode_sample(sample)
            if first + info.clips in picks:
                kept[first + info.clips] = (f"{name}/{sample.get('__key__', '?')}", clip)
            _add_clip(info, clip, counts, controls)
            if "on_road" in clip.meta:
                on_road[0] += float(clip.meta["on_road"]) * len(clip.frames)
                on_road[1] += len(clip.frames)
            n += 1
        if n != shard["count"]:
            raise ValueError(f"{path} holds {n} clips but {MANIFEST} says {shard['count']}")
    info.action_counts = _named_counts(info.action_space, counts)
    info.control_histograms = _histograms(info.action_space, controls)
    info.on_road = on_road[0] / on_road[1] if on_road[1] else None
    return info, kept


def contact_sheet(clips: list[tuple[str, Clip]]) -> Image.Image:
    """Rows = (label, clip) pairs, columns = evenly subsampled frames at the first clip's
    resolution. Each row's label stands in a left margin and each frame's index t above it."""
    _, h, w, _ = clips[0][1].frames.shape
    cols = min(SHEET_COLS, min(len(c.frames) for _, c in clips))
    font = ImageFont.load_default(size=10)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    margin = 6 + max(round(probe.textlength(label, font=font)) for label, _ in clips)
    row_h = CAPTION + h
    sheet = Image.new("RGB", (margin + cols * w, len(clips) * row_h), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (label, clip) in enumerate(clips):
        top = row * row_h + CAPTION
        draw.text((2, top + h // 2), label, fill="black", font=font, anchor="lm")
        for col, t in enumerate(np.linspace(0, len(clip.frames) - 1, cols).round().astype(int)):
            tile = Image.fromarray(clip.frames[t]).resize((w, h), Image.Resampling.BILINEAR)
            sheet.paste(tile, (margin + col * w, top))
            draw.text((margin + col * w + 1, top - 1), f"t={t}", fill="black", font=font,
                      anchor="lb")  # fmt: skip
    return sheet


def dataset_info(dir: str | Path, sheet_path: str | Path | None = None) -> InfoReport:
    """Summarise shard folder `dir`; draw its contact sheet (default dir/contact_sheet.png)."""
    root = Path(dir)
    if not root.is_dir():
        raise FileNotFoundError(f"shard folder not found: {root}")
    if not (root / MANIFEST).is_file():
        raise FileNotFoundError(
            f"{root} has no {MANIFEST}; write one with `worldsim data shard SOURCE --out {root}`"
        )
    splits = read_manifest(root)["splits"]
    total = sum(e["clips"] for e in splits.values())
    picks = set(np.linspace(0, total - 1, min(SHEET_ROWS, total)).round().astype(int).tolist())
    infos: list[SplitInfo] = []
    kept: dict[int, tuple[str, Clip]] = {}
    for name, entry in splits.items():
        info, clips = _scan_split(root, name, entry, picks, sum(i.clips for i in infos))
        infos.append(info)
        kept.update(clips)
    if not kept:
        return InfoReport(str(root), infos, None, None)
    sheet = contact_sheet([kept[i] for i in sorted(kept)])
    out = Path(sheet_path) if sheet_path else root / "contact_sheet.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    write_atomic(out, buf.getvalue())
    return InfoReport(str(root), infos, str(out), sheet.size)
