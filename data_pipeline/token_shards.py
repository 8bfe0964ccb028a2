"""Token shards: clips already run through the video tokenizer, so dynamics training never
re-encodes frames. Model-free: the writer (`tokenizer/tokenize_shards.py`) owns the models.

One webdataset sample per clip, keyed like the frame sample it came from:

| member               | content                                                              |
| -------------------- | -------------------------------------------------------------------- |
| `tokens.npy`         | uint16 (T, h, w) token ids, all < `tokenizer.num_codes`              |
| `actions.npy`        | the frame sample's true actions, copied unchanged, when it has them  |
| `latent_actions.npy` | uint8 (T-1,) latent action ids from a LAM, only when one was given;  |
|                      | action t explains frame t -> t+1, as `actions[t]` does               |
| `meta.json`          | the clip's meta plus `tokenizer` {num_codes, grid, checkpoint_sha256, |
|                      | path} and, with latent actions, `lam` {num_actions, checkpoint_sha256} |

A token folder is laid out like a frame folder (see manifest.py): `<split>-NNNNNN.tar`, one per
frame shard, a `<split>-NNNNNN.record.json` beside each, `<split>.job.json` and `manifest.json`,
whose split entries add `token_shape`, `tokenizer`, `lam` and `source` (the frame shards' names,
sha256s and content hash). Token ids of different tokenizers mean different things, so
`TokenLoader` refuses shards written by different tokenizer or LAM checkpoints.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from data_pipeline.manifest import MANIFEST
from data_pipeline.schema import ACTIONS, META
from data_pipeline.shard_source import URL_PREFIXES, iter_shard_samples, log_bad_shard
from data_pipeline.streaming import (
    LoaderConfig,
    SampleFormat,
    StreamingLoader,
    collate_actions,
)
from worldsim.io.files import file_sha256

TOKENS = "tokens.npy"
LATENT_ACTIONS = "latent_actions.npy"
TOKEN_DTYPE = np.uint16  # holds codebooks of up to 65536 codes in 2 bytes
LATENT_DTYPE = np.uint8  # holds up to 256 latent actions; Genie uses 8


@dataclass(frozen=True)
class TokenIdentity:
    """Which tokenizer (and LAM) made a token shard: ids only mean something under these."""

    num_codes: int
    grid: int  # tokens per side of a frame
    tokenizer_sha256: str  # of the checkpoint's weights, see `checkpoint_sha256`
    num_actions: int | None = None  # latent actions; None when no LAM was given
    lam_sha256: str | None = None
    tokenizer_path: str = field(default="", compare=False)  # where it was loaded; informative

    def to_meta(self) -> dict[str, Any]:
        """The `tokenizer` and `lam` entries of a sample's meta and of a manifest split."""
        tok: dict[str, Any] = {"num_codes": self.num_codes, "grid": self.grid}
        tok |= {"checkpoint_sha256": self.tokenizer_sha256, "path": self.tokenizer_path}
        lam = None
        if self.lam_sha256 is not None:
            lam = {"num_actions": self.num_actions, "checkpoint_sha256": self.lam_sha256}
        return {"tokenizer": tok, "lam": lam}

    @classmethod
    def from_meta(cls, meta: dict[str, Any], where: str) -> TokenIdentity:
        tok, lam = meta.get("tokenizer"), meta.get("lam")
        if not isinstance(tok, dict):
            raise ValueError(f"{where} names no tokenizer: not a token shard")
        try:
            return cls(
                num_codes=int(tok["num_codes"]),
                grid=int(tok["grid"]),
                tokenizer_sha256=str(tok["checkpoint_sha256"]),
                num_actions=int(lam["num_actions"]) if lam else None,
                lam_sha256=str(lam["checkpoint_sha256"]) if lam else None,
                tokenizer_path=str(tok.get("path", "")),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where} has a malformed tokenizer/lam identity: {err!r}") from err

    def describe(self) -> str:
        text = (
            f"tokenizer sha256 {self.tokenizer_sha256} ({self.num_codes} codes, grid {self.grid})"
        )
        if self.lam_sha256 is not None:
            text += f" + LAM sha256 {self.lam_sha256} ({self.num_actions} actions)"
        return text + (f" from {self.tokenizer_path}" if self.tokenizer_path else "")

    def check_same(self, other: TokenIdentity, here: str, there: str) -> None:
        if self != other:
            raise ValueError(
                f"token shards from different models cannot be mixed: {here} has "
                f"{self.describe()}, {there} has {other.describe()}"
            )


def checkpoint_sha256(folder: str | Path) -> str:
    """sha256 of a `save_pretrained` folder's weights: its one safetensors file, or, for a
    sharded save, the hash of the sorted (name, sha256) list of its files."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors weights in checkpoint folder {folder}")
    if len(files) == 1:
        return file_sha256(files[0])
    listing = "\n".join(f"{f.name} {file_sha256(f)}" for f in files)
    return hashlib.sha256(listing.encode()).hexdigest()


@dataclass
class TokenClip:
    """One tokenized clip; construction checks it against the identity in its meta."""

    tokens: np.ndarray  # (T, h, w) uint16
    actions: np.ndarray | None  # (T,) int64 or (T, D) float32; None when unknown
    latent_actions: np.ndarray | None  # (T-1,) uint8; None when no LAM was given
    meta: dict[str, Any]

    @property
    def identity(self) -> TokenIdentity:
        return TokenIdentity.from_meta(self.meta, "clip meta")

    def __post_init__(self) -> None:
        ident, tokens = self.identity, self.tokens
        g = ident.grid
        if tokens.dtype != TOKEN_DTYPE or tokens.ndim != 3 or tokens.shape[1:] != (g, g):
            raise ValueError(
                f"tokens must be uint16 (T, {g}, {g}), got {tokens.dtype} {tokens.shape}"
            )
        if tokens.size and int(tokens.max()) >= ident.num_codes:
            raise ValueError(
                f"token id {int(tokens.max())} >= {ident.num_codes}, the tokenizer's code count"
            )
        T = len(tokens)
        if self.actions is not None and len(self.actions) != T:
            raise ValueError(f"clip has {T} token frames but {len(self.actions)} actions")
        self._check_latent(ident, T)

    def _check_latent(self, ident: TokenIdentity, T: int) -> None:
        latent = self.latent_actions
        if (latent is None) != (ident.num_actions is None):
            raise ValueError("latent actions must be present exactly when meta names a LAM")
        if latent is None or ident.num_actions is None:
            return
        if latent.dtype != LATENT_DTYPE or latent.shape != (T - 1,):
            raise ValueError(
                f"latent actions must be uint8 ({T - 1},), got {latent.dtype} {latent.shape}"
            )
        if latent.size and int(latent.max()) >= ident.num_actions:
            raise ValueError(
                f"latent action {int(latent.max())} >= {ident.num_actions}, the LAM's action count"
            )


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _npy(sample: dict[str, Any], member: str) -> np.ndarray | None:
    if member not in sample:
        return None
    return np.load(io.BytesIO(sample[member]), allow_pickle=False)


def encode_token_sample(key: str, clip: TokenClip) -> dict[str, Any]:
    """TokenClip -> the dict webdataset's TarWriter writes (bytes values)."""
    sample: dict[str, Any] = {"__key__": key, TOKENS: _npy_bytes(clip.tokens)}
    sample[META] = json.dumps(clip.meta, sort_keys=True).encode()
    if clip.actions is not None:
        sample[ACTIONS] = _npy_bytes(clip.actions)
    if clip.latent_actions is not None:
        sample[LATENT_ACTIONS] = _npy_bytes(clip.latent_actions)
    return sample


def decode_token_sample(sample: dict[str, Any]) -> TokenClip:
    """Raw sample -> TokenClip; ValueError naming the sample when it is malformed."""
    key = sample.get("__key__", "?")
    tokens = _npy(sample, TOKENS)
    if tokens is None or META not in sample:
        raise ValueError(f"sample {key!r} lacks {TOKENS} or {META}: not a token sample")
    meta = json.loads(sample[META])
    try:
        return TokenClip(tokens, _npy(sample, ACTIONS), _npy(sample, LATENT_ACTIONS), meta)
    except ValueError as err:
        raise ValueError(f"sample {key!r}: {err}") from err


@dataclass
class TokenBatch:
    tokens: Tensor  # (B, T, h, w) int64
    actions: Tensor  # (B, T) int64 or (B, T, D) float32; zeros where unknown
    action_mask: Tensor  # (B,) bool: True where the clip has true actions
    latent_actions: Tensor | None  # (B, T-1) int64; None when the shards hold none
    keys: list[str]

    def _map(self, fn: Any) -> TokenBatch:
        latent = None if self.latent_actions is None else fn(self.latent_actions)
        return TokenBatch(
            fn(self.tokens), fn(self.actions), fn(self.action_mask), latent, self.keys
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TokenBatch:
        return self._map(partial(Tensor.to, device=device, non_blocking=non_blocking))

    def pin_memory(self) -> TokenBatch:
        """Called by DataLoader's pinning thread when `pin_memory` is on."""
        return self._map(Tensor.pin_memory)


def collate_tokens(clips: list[TokenClip], keys: list[str], cfg: LoaderConfig) -> TokenBatch:
    shape = clips[0].tokens.shape
    for clip, key in zip(clips, keys, strict=True):
        if clip.tokens.shape != shape:
            raise ValueError(
                f"clip {key!r} has tokens {clip.tokens.shape} but {keys[0]!r} has {shape}"
            )
    tokens = torch.from_numpy(np.stack([c.tokens for c in clips]).astype(np.int64))
    B, T = tokens.shape[:2]
    mask = torch.tensor([c.actions is not None for c in clips], dtype=torch.bool)
    actions = collate_actions(clips, keys, B, T, cfg.action_dim)
    known = [c.latent_actions for c in clips if c.latent_actions is not None]
    latent = None
    if len(known) == len(clips):
        latent = torch.from_numpy(np.stack(known).astype(np.int64))  # (B, T-1)
    elif known:
        raise ValueError(f"clips {keys} mix samples with and without latent actions")
    return TokenBatch(tokens, actions, mask, latent, keys)


TOKEN_FORMAT = SampleFormat(decode=decode_token_sample, collate=collate_tokens)


@dataclass
class TokenLoaderConfig(LoaderConfig):
    # A 16-frame 16x16 token clip is 8 KB, a 64x64 frame clip 200 KB: the same memory shuffles
    # 25x more token clips.
    shuffle_buffer: int = 2048


def _manifest_identities(folder: Path) -> dict[str, TokenIdentity]:
    """Shard name -> the identity the folder's manifest records for its split; {} without one."""
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    found: dict[str, TokenIdentity] = {}
    for split, entry in json.loads(path.read_text()).get("splits", {}).items():
        ident = TokenIdentity.from_meta(entry, f"{path} split {split!r}")
        found |= {s["name"]: ident for s in entry.get("shards", []) if "name" in s}
    return found


def _first_sample_identity(url: str) -> TokenIdentity | None:
    for sample in iter_shard_samples(url, log_bad_shard):
        key = sample.get("__key__", "?")
        if META not in sample:
            raise ValueError(f"sample {key!r} of {url} has no {META}: not a token shard")
        return TokenIdentity.from_meta(json.loads(sample[META]), f"sample {key!r} of {url}")
    return None


def read_token_identity(urls: list[str]) -> TokenIdentity:
    """The one identity of these token shards (from their manifests, else their first sample);
    ValueError naming both models when two differ."""
    found: TokenIdentity | None = None
    first = ""
    listed: dict[Path, dict[str, TokenIdentity]] = {}
    for url in urls:
        ident = None
        if not url.startswith(URL_PREFIXES):
            folder = Path(url).parent
            if folder not in listed:
                listed[folder] = _manifest_identities(folder)
            ident = listed[folder].get(Path(url).name)
        ident = ident or _first_sample_identity(url)
        if ident is None:
            continue
        if found is None:
            found, first = ident, url
        found.check_same(ident, first, url)
    if found is None:
        raise ValueError(f"no readable token sample in {len(urls)} shard(s), e.g. {urls[:1]}")
    return found


class TokenLoader(StreamingLoader[TokenBatch]):
    """Token shards -> `TokenBatch`es; epochs, rank/worker splitting and exact resume as
    `ShardLoader`. `token_identity` says which tokenizer/LAM made the shards, so a trainer can
    check its model against it before the first step."""

    sample_format = TOKEN_FORMAT

    def __init__(
        self, cfg: LoaderConfig, rank: int | None = None, world_size: int | None = None
    ) -> None:
        super().__init__(cfg, rank, world_size)
        self.token_identity = read_token_identity(self.urls)
