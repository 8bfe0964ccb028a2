"""`worldsim data tokenize`: frame shards in, token shards out, so the tokenizer runs once rather
than every epoch of dynamics training. The token schema is `data_pipeline/token_shards.py`.

Frame shard i of a split becomes token shard `<out>/<split>-{i:06d}.tar`, its clips in stored
order under the same keys, so a token shard is a pure function of (frame shard, tokenizer, LAM):
byte-identical on a rerun on the same device. Each shard is written under a temporary name and
renamed, then its record; a rerun skips shards whose record and checksum match, and refuses a
split made by other models or from other frame shards rather than mixing them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from webdataset.writer import TarWriter

from data_pipeline.loader import collate
from data_pipeline.manifest import (
    MANIFEST,
    job_path,
    merge_split,
    read_manifest,
    record_path,
    shard_name,
)
from data_pipeline.schema import Clip, decode_sample
from data_pipeline.shard_job import TAR_MTIME
from data_pipeline.shard_source import URL_PREFIXES, expand_shard_urls, iter_shard_samples
from data_pipeline.token_shards import (
    LATENT_DTYPE,
    TOKEN_DTYPE,
    TokenClip,
    TokenIdentity,
    checkpoint_sha256,
    encode_token_sample,
)
from tokenizer.registry import AnyTokenizer
from worldsim.io.files import PARTIAL, file_sha256, write_json
from worldsim.io.progress import progress


class LatentActionEncoder(Protocol):
    """What the writer needs of a latent action model (`simulator.models.lam.LatentActionModel`
    fits). Duck-typed because tokenizer/ never imports simulator/."""

    @property
    def num_actions(self) -> int: ...

    def encode(self, frames_BTCHW: Tensor) -> Tensor:
        """frames (B, T, C, H, W) in [-1, 1] -> latent action ids (B, T-1) int64."""
        ...


@dataclass(frozen=True)
class SourceShard:
    index: int
    url: str
    sha256: str | None  # listed in the frame manifest, else hashed here; None for remote URLs
    listed: bool  # sha256 comes from the manifest, so the file is checked against it

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass
class TokenizeReport:
    out: str
    split: str
    shards_written: int
    shards_skipped: int  # complete on disk from an earlier (interrupted) run
    clips: int
    clips_written: int  # by this run
    identity: TokenIdentity
    content_hash: str
    elapsed_s: float

    def render(self) -> str:
        rate = self.clips_written / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return "\n".join(
            [
                f"shards: {self.shards_written} written, {self.shards_skipped} skipped (resumed)",
                f"clips: {self.clips} ({self.clips_written} tokenized by this run)",
                f"models: {self.identity.describe()}",
                f"elapsed: {self.elapsed_s:.1f} s ({rate:.1f} clips/s)",
                f"content hash: {self.content_hash}",
                f"out: {self.out} (split {self.split!r})",
            ]
        )


def model_identity(
    tokenizer: AnyTokenizer,
    tokenizer_checkpoint: str | Path,
    lam: LatentActionEncoder | None = None,
    lam_checkpoint: str | Path | None = None,
) -> TokenIdentity:
    """The identity token shards record; ValueError when ids would not fit the schema's dtypes."""
    if (lam is None) != (lam_checkpoint is None):
        raise ValueError("give a LAM together with its checkpoint folder, or neither")
    if tokenizer.num_codes > np.iinfo(TOKEN_DTYPE).max + 1:
        raise ValueError(f"{tokenizer.num_codes} codes do not fit the uint16 token schema")
    if lam is not None and lam.num_actions > np.iinfo(LATENT_DTYPE).max + 1:
        raise ValueError(f"{lam.num_actions} latent actions do not fit the uint8 schema")
    return TokenIdentity(
        num_codes=tokenizer.num_codes,
        grid=tokenizer.cfg.grid,
        tokenizer_sha256=checkpoint_sha256(tokenizer_checkpoint),
        num_actions=lam.num_actions if lam is not None else None,
        lam_sha256=checkpoint_sha256(lam_checkpoint) if lam_checkpoint is not None else None,
        tokenizer_path=str(Path(tokenizer_checkpoint).resolve()),
    )


def default_token_dir(frame_shards: str, identity: TokenIdentity) -> Path:
    """`<frame folder>/tokens-<tokenizer sha[:8]>[-lam-<LAM sha[:8]>]`, beside the frame shards."""
    if frame_shards.startswith(URL_PREFIXES):
        raise ValueError(f"frame shards {frame_shards!r} are remote: name the token folder (--out)")
    spec = Path(frame_shards)
    folder = spec if spec.is_dir() else Path(expand_shard_urls(frame_shards)[0]).parent
    name = f"tokens-{identity.tokenizer_sha256[:8]}"
    if identity.lam_sha256 is not None:
        name += f"-lam-{identity.lam_sha256[:8]}"
    return folder / name


def _frame_entry(url: str, cache: dict[Path, dict[str, Any]]) -> dict[str, Any] | None:
    """The frame manifest's split entry listing this local shard; None without one."""
    if url.startswith(URL_PREFIXES):
        return None
    folder = Path(url).parent
    if folder not in cache:
        cache[folder] = read_manifest(folder) if (folder / MANIFEST).is_file() else {}
    for entry in cache[folder].get("splits", {}).values():
        if any(s.get("name") == Path(url).name for s in entry.get("shards", [])):
            return dict(entry)
    return None


def source_shards(frame_shards: str, split: str) -> tuple[list[SourceShard], dict[str, Any]]:
    """The frame shards to tokenize, and the frame manifest entry of the first (or {})."""
    cache: dict[Path, dict[str, Any]] = {}
    sources: list[SourceShard] = []
    first: dict[str, Any] | None = None
    for i, url in enumerate(expand_shard_urls(frame_shards, split)):
        entry = _frame_entry(url, cache)
        first = entry if first is None else first
        listed = {s["name"]: s.get("sha256") for s in (entry or {}).get("shards", [])}
        sha = listed.get(url.rsplit("/", 1)[-1])
        if sha is not None:
            sources.append(SourceShard(i, url, sha, listed=True))
        else:
            local = not url.startswith(URL_PREFIXES)
            sources.append(SourceShard(i, url, file_sha256(Path(url)) if local else None, False))
    return sources, first or {}


def _job(identity: TokenIdentity, sources: list[SourceShard]) -> dict[str, Any]:
    meta = identity.to_meta()
    meta["tokenizer"].pop("path")  # the same weights loaded from elsewhere make the same tokens
    return {**meta, "source": [{"name": s.name, "sha256": s.sha256} for s in sources]}


def _models(job: dict[str, Any]) -> dict[str, Any]:
    return {k: job[k] for k in ("tokenizer", "lam")}


def _claim_split(out: Path, split: str, identity: TokenIdentity, job: dict[str, Any]) -> None:
    """Refuse a folder of other models' tokens, or a split made from other frame shards."""
    for other, entry in read_manifest(out)["splits"].items():
        there = TokenIdentity.from_meta(entry, f"{out / MANIFEST} split {other!r}")
        there.check_same(identity, f"{out} (split {other!r})", "this run")
    path = job_path(out, split)
    if path.is_file():
        earlier = json.loads(path.read_text())
        TokenIdentity.from_meta(earlier, str(path)).check_same(identity, str(path), "this run")
        if earlier != job:
            raise ValueError(
                f"split {split!r} in {out} was tokenized from other frame shards; use another "
                f"--out or --split, or delete {out} to rebuild it"
            )
    write_json(path, job)


def _completed(out: Path, split: str, src: SourceShard, job: dict[str, Any]) -> dict | None:
    """The record of a token shard an earlier run finished from this source, tar intact."""
    path = record_path(out, split, src.index)
    try:
        record: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    made_by = {k: record.get(k) for k in ("tokenizer", "lam")}
    if made_by != _models(job) or record.get("source") != src.name:
        return None
    tar = out / record["name"]
    same_source = record.get("source_sha256") == src.sha256
    return (
        record if same_source and tar.is_file() and file_sha256(tar) == record["sha256"] else None
    )


def _frame_batches(src: SourceShard, batch_size: int) -> Iterator[tuple[list[str], list[Clip]]]:
    """Clips of one frame shard in stored order, `batch_size` at a time; ValueError naming the
    shard when it does not match its manifest checksum or cannot be read to the end."""
    if src.listed and file_sha256(Path(src.url)) != src.sha256:
        raise ValueError(
            f"frame shard {src.url} does not match the sha256 its manifest records: it is "
            "corrupt, truncated or was rewritten; re-shard it before tokenizing"
        )

    def on_error(url: str, exn: Exception) -> None:
        raise ValueError(f"frame shard {url} is corrupt or truncated: {exn}") from exn

    keys: list[str] = []
    clips: list[Clip] = []
    for sample in iter_shard_samples(src.url, on_error):
        key = sample.get("__key__", "?")
        try:
            clips.append(decode_sample(sample))
        except (ValueError, EOFError, OSError) as err:
            raise ValueError(f"frame shard {src.url}: malformed sample {key!r}: {err}") from err
        keys.append(key)
        if len(clips) == batch_size:
            yield keys, clips
            keys, clips = [], []
    if clips:
        yield keys, clips


def _device(model: object, default: torch.device) -> torch.device:
    if isinstance(model, nn.Module):
        return next(model.parameters(), torch.empty(0, device=default)).device
    return default


def _tokenize_batch(
    tokenizer: AnyTokenizer,
    lam: LatentActionEncoder | None,
    identity: TokenIdentity,
    keys: list[str],
    clips: list[Clip],
) -> list[TokenClip]:
    batch = collate(clips, keys, action_dim=None)
    frames_BTCHW, device = batch.frames, _device(tokenizer, torch.device("cpu"))
    # A renderer told the controls encodes with them (the others ignore them).
    actions = batch.actions.to(device) if bool(batch.action_mask.all()) else None
    tokens_BThw = tokenizer.encode(frames_BTCHW.to(device), actions).cpu().numpy()
    tokens_BThw = tokens_BThw.astype(TOKEN_DTYPE)
    B, T = frames_BTCHW.shape[:2]
    latent_BA: list[np.ndarray | None] = [None] * B
    if lam is not None:
        latent = lam.encode(frames_BTCHW.to(_device(lam, device))).cpu()
        if tuple(latent.shape) != (B, T - 1) or latent.is_floating_point():
            raise ValueError(
                f"the LAM returned {latent.dtype} {tuple(latent.shape)} latent actions for "
                f"{B} clips of {T} frames; expected integer ids (B, T-1) = ({B}, {T - 1})"
            )
        lo, hi = int(latent.min()), int(latent.max())
        if lo < 0 or hi >= lam.num_actions:
            raise ValueError(
                f"the LAM returned latent action ids in [{lo}, {hi}], outside its "
                f"[0, {lam.num_actions}) actions"
            )
        latent_BA = list(latent.numpy().astype(LATENT_DTYPE))
    models = {k: v for k, v in identity.to_meta().items() if v is not None}
    return [
        TokenClip(tokens_BThw[i], clip.actions, latent_BA[i], {**clip.meta, **models})
        for i, clip in enumerate(clips)
    ]


def _write_token_shard(
    tokenizer: AnyTokenizer,
    lam: LatentActionEncoder | None,
    identity: TokenIdentity,
    src: SourceShard,
    final: Path,
    batch_size: int,
) -> dict[str, Any]:
    """Tokenize one frame shard into `final` (temporary name, then rename); return its record."""
    tmp = final.with_name(final.name + PARTIAL)
    count, shapes = 0, set()
    with TarWriter(str(tmp), encoder=False, mtime=TAR_MTIME) as writer:
        for keys, clips in _frame_batches(src, batch_size):
            tokenized = _tokenize_batch(tokenizer, lam, identity, keys, clips)
            for key, clip in zip(keys, tokenized, strict=True):
                writer.write(encode_token_sample(key, clip))
                shapes.add(clip.tokens.shape)
            count += len(keys)
    if len(shapes) > 1:
        raise ValueError(f"frame shard {src.url} holds clips of different lengths {shapes}")
    sha = file_sha256(tmp)
    tmp.replace(final)
    return {
        "name": final.name,
        "count": count,
        "sha256": sha,
        "token_shape": list(shapes.pop()) if shapes else None,
        "source": src.name,
        "source_sha256": src.sha256,
    }


def _split_entry(
    records: list[dict[str, Any]],
    job: dict[str, Any],
    identity: TokenIdentity,
    frame_entry: dict[str, Any],
    frame_shards: str,
) -> dict[str, Any]:
    shapes = {tuple(r["token_shape"]) for r in records if r["token_shape"]}
    if len(shapes) > 1:
        raise ValueError(f"token shards of one split differ in shape: {sorted(shapes)}")
    shas = [r["sha256"] for r in records]
    source_hash = frame_entry.get("content_hash")
    if source_hash is None:
        source_hash = hashlib.sha256("\n".join(s["sha256"] or "" for s in job["source"]).encode())
        source_hash = source_hash.hexdigest()
    return {
        "shards": [{k: r[k] for k in ("name", "count", "sha256")} for r in records],
        "clips": sum(r["count"] for r in records),
        "token_shape": list(shapes.pop()) if shapes else None,
        **identity.to_meta(),
        "action_space": frame_entry.get("action_space"),
        "fps": frame_entry.get("fps"),
        "source": {"spec": frame_shards, "shards": job["source"], "content_hash": source_hash},
        "content_hash": hashlib.sha256("\n".join(shas).encode()).hexdigest(),
    }


def tokenize_shards(
    tokenizer: AnyTokenizer,
    frame_shards: str,
    split: str = "train",
    out: str | Path | None = None,
    *,
    tokenizer_checkpoint: str | Path,
    lam: LatentActionEncoder | None = None,
    lam_checkpoint: str | Path | None = None,
    batch_size: int = 8,
) -> TokenizeReport:
    """Write (or finish writing) token shards of split `split` of `frame_shards` into `out`
    (default: `default_token_dir`) and merge the split into its manifest. The models must be
    the ones saved in the checkpoint folders, whose weights' sha256 identify the tokens; they are
    put in eval mode and run on the device they are on."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    start = time.perf_counter()
    identity = model_identity(tokenizer, tokenizer_checkpoint, lam, lam_checkpoint)
    sources, frame_entry = source_shards(frame_shards, split)
    out = Path(out) if out is not None else default_token_dir(frame_shards, identity)
    out.mkdir(parents=True, exist_ok=True)
    job = _job(identity, sources)
    _claim_split(out, split, identity, job)
    for leftover in out.glob(f"{split}-*{PARTIAL}"):
        leftover.unlink()
    records = {s.index: r for s in sources if (r := _completed(out, split, s, job)) is not None}
    skipped, written = len(records), 0
    tokenizer.eval()
    if isinstance(lam, nn.Module):
        lam.eval()
    with (
        torch.no_grad(),
        progress(total=len(sources), initial=skipped, unit="shard") as bar,
    ):
        bar.set_description(f"tokenize {split}")
        for src in (s for s in sources if s.index not in records):
            final = out / shard_name(split, src.index)
            record = _write_token_shard(tokenizer, lam, identity, src, final, batch_size)
            write_json(record_path(out, split, src.index), {**record, **_models(job)})
            records[src.index] = record
            written += record["count"]
            bar.set_postfix(clips=written)
            bar.update()
    ordered = [records[s.index] for s in sources]
    entry = _split_entry(ordered, job, identity, frame_entry, frame_shards)
    merge_split(out, split, entry)
    return TokenizeReport(
        out=str(out),
        split=split,
        shards_written=len(sources) - skipped,
        shards_skipped=skipped,
        clips=entry["clips"],
        clips_written=written,
        identity=identity,
        content_hash=entry["content_hash"],
        elapsed_s=time.perf_counter() - start,
    )
