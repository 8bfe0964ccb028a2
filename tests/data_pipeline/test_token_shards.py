"""Token shards without a model: sample schema checks, TokenLoader batches, identity, resume."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from data_pipeline.manifest import MANIFEST, merge_split
from data_pipeline.schema import Clip, encode_sample
from data_pipeline.token_shards import (
    TOKENS,
    TokenBatch,
    TokenClip,
    TokenIdentity,
    TokenLoader,
    TokenLoaderConfig,
    decode_token_sample,
    encode_token_sample,
)

T, G = 5, 3  # frames per clip, tokens per side
IDENT = TokenIdentity(
    num_codes=50, grid=G, tokenizer_sha256="a" * 64, num_actions=6, lam_sha256="b" * 64
)
NO_LAM = TokenIdentity(num_codes=50, grid=G, tokenizer_sha256="a" * 64)


def token_clip(rng: np.random.Generator, ident: TokenIdentity, with_actions: bool) -> TokenClip:
    tokens = rng.integers(0, ident.num_codes, (T, G, G)).astype(np.uint16)
    latent = None
    if ident.num_actions is not None:
        latent = rng.integers(0, ident.num_actions, T - 1).astype(np.uint8)
    actions = rng.integers(0, 15, T) if with_actions else None
    meta = {"fps": 10.0, **{k: v for k, v in ident.to_meta().items() if v is not None}}
    return TokenClip(tokens, actions, latent, meta)


def write_token_shards(
    folder: Path, counts: list[int], ident: TokenIdentity = IDENT, manifest: bool = True
) -> dict[str, TokenClip]:
    """Token shards `train-00000i.tar` of counts[i] clips; odd clips carry true actions."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(counts))
    clips: dict[str, TokenClip] = {}
    for s, count in enumerate(counts):
        with wds.TarWriter(str(folder / f"train-{s:06d}.tar"), encoder=False) as sink:
            for i in range(count):
                key = f"{folder.name}{s}-{i:06d}"
                clips[key] = token_clip(rng, ident, with_actions=bool(i % 2))
                sink.write(encode_token_sample(key, clips[key]))
    if manifest:
        shards = [{"name": f"train-{s:06d}.tar", "count": c} for s, c in enumerate(counts)]
        merge_split(folder, "train", {"shards": shards, **ident.to_meta()})
    return clips


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def make(shards: str | list[str], **kw: object) -> TokenLoader:
    args: dict = {"shards": shards, "batch_size": 3, "num_workers": 0, "shuffle_buffer": 5}
    args.update(kw)
    rank, world = args.pop("rank", 0), args.pop("world_size", 1)
    return TokenLoader(TokenLoaderConfig(**args), rank=rank, world_size=world)


def keys_of(loader: TokenLoader) -> list[list[str]]:
    return [batch.keys for batch in loader]


def test_batch_contract(tmp_path: Path) -> None:
    clips = write_token_shards(tmp_path, [4, 3])
    batches: list[TokenBatch] = list(make(str(tmp_path), batch_size=4))
    assert sorted(k for b in batches for k in b.keys) == sorted(clips)
    for b in batches:
        B = len(b.keys)
        assert b.tokens.shape == (B, T, G, G) and b.tokens.dtype == torch.int64
        assert b.actions.shape == (B, T) and b.actions.dtype == torch.int64
        assert b.latent_actions is not None and b.latent_actions.shape == (B, T - 1)
        assert b.latent_actions.dtype == torch.int64
        for i, key in enumerate(b.keys):
            clip = clips[key]
            assert b.tokens[i].tolist() == clip.tokens.tolist()
            assert bool(b.action_mask[i]) == (clip.actions is not None)
            want = clip.actions.tolist() if clip.actions is not None else [0] * T
            assert b.actions[i].tolist() == want
            assert clip.latent_actions is not None
            assert b.latent_actions[i].tolist() == clip.latent_actions.tolist()
    moved = batches[0].to("cpu")
    assert moved.keys == batches[0].keys and torch.equal(moved.tokens, batches[0].tokens)


def test_without_lam_latent_actions_are_none(tmp_path: Path) -> None:
    write_token_shards(tmp_path, [3], ident=NO_LAM)
    loader = make(str(tmp_path))
    assert loader.token_identity == NO_LAM
    assert all(b.latent_actions is None for b in loader)


def test_identity_from_manifest_or_first_sample(tmp_path: Path) -> None:
    write_token_shards(tmp_path / "listed", [2])
    write_token_shards(tmp_path / "loose", [2], manifest=False)
    assert make(str(tmp_path / "listed")).token_identity == IDENT
    loose = make(str(tmp_path / "loose" / "train-*.tar")).token_identity
    assert loose == IDENT and (loose.num_codes, loose.grid, loose.num_actions) == (50, G, 6)
    frames = Clip(np.zeros((T, 4, 4, 3), np.uint8), None, {"fps": 10.0})
    with wds.TarWriter(str(tmp_path / "frames-000000.tar"), encoder=False) as sink:
        sink.write(encode_sample("f-000000", frames))
    with pytest.raises(ValueError, match="names no tokenizer: not a token shard"):
        make(str(tmp_path / "frames-000000.tar"))


@pytest.mark.parametrize("manifest", [True, False])
def test_mixing_tokenizers_is_refused_naming_both(tmp_path: Path, manifest: bool) -> None:
    other = TokenIdentity(
        num_codes=50, grid=G, tokenizer_sha256="c" * 64, num_actions=6, lam_sha256="b" * 64
    )
    write_token_shards(tmp_path / "one", [2], manifest=manifest)
    write_token_shards(tmp_path / "two", [2], ident=other, manifest=manifest)
    specs = [str(tmp_path / name / "train-*.tar") for name in ("one", "two")]
    with pytest.raises(ValueError, match="a{64}.*c{64}"):
        make(specs)
    write_token_shards(tmp_path / "nolam", [2], ident=NO_LAM)
    with pytest.raises(ValueError, match="different models"):
        make([specs[0], str(tmp_path / "nolam")])


def test_sample_checks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    good = encode_token_sample("k-000000", token_clip(rng, IDENT, with_actions=True))
    assert decode_token_sample(good).tokens.dtype == np.uint16
    clip = token_clip(rng, IDENT, with_actions=False)
    clip.tokens[0, 0, 0] = 50
    with pytest.raises(ValueError, match="token id 50 >= 50"):
        TokenClip(clip.tokens, None, clip.latent_actions, clip.meta)
    with pytest.raises(ValueError, match="exactly when meta names a LAM"):
        TokenClip(clip.tokens % 50, None, None, clip.meta)
    with pytest.raises(ValueError, match="not a token sample"):
        decode_token_sample({"__key__": "k", "frames.npy": b""})
    with pytest.raises(ValueError, match="no tokenizer"):
        TokenClip(clip.tokens % 50, None, clip.latent_actions, {"fps": 1})


def test_out_of_range_sample_and_truncated_shard_are_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clips = write_token_shards(tmp_path, [4, 4])
    bad = token_clip(np.random.default_rng(1), IDENT, with_actions=False)
    sample = encode_token_sample("bad-000000", bad)
    bad.tokens[0, 0, 0] = 55  # >= the 50 codes the sample's meta declares
    sample[TOKENS] = npy_bytes(bad.tokens)
    with wds.TarWriter(str(tmp_path / "train-000002.tar"), encoder=False) as sink:
        sink.write(sample)
    whole = (tmp_path / "train-000000.tar").read_bytes()
    (tmp_path / "train-000003.tar").write_bytes(whole[: len(whole) // 2])
    loader = make(str(tmp_path / "train-*.tar"))
    with caplog.at_level(logging.WARNING):
        seen = [k for keys in keys_of(loader) for k in keys]
    assert set(clips) <= set(seen) and "bad-000000" not in seen
    assert loader.skipped == {"bad_shards": 1, "bad_samples": 1}
    assert any("token id 55 >= 50" in r.message for r in caplog.records)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_gives_the_exact_continuation(tmp_path: Path, num_workers: int) -> None:
    write_token_shards(tmp_path, [7, 2, 6, 5])
    kw = {"num_workers": num_workers, "seed": 3}
    whole = keys_of(make(str(tmp_path), **kw))
    interrupted = make(str(tmp_path), **kw)
    for i, _ in enumerate(interrupted, 1):
        if i == 3:
            break
    resumed = make(str(tmp_path), **kw)
    resumed.load_state_dict(json.loads(json.dumps(interrupted.state_dict())))
    assert keys_of(resumed) == whole[3:]


def test_rank_split_is_disjoint_and_covering(tmp_path: Path) -> None:
    clips = write_token_shards(tmp_path, [3, 4, 2, 5])
    seen = [
        [k for keys in keys_of(make(str(tmp_path), rank=r, world_size=2)) for k in keys]
        for r in (0, 1)
    ]
    assert seen[0] and seen[1] and not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(clips)
    assert (tmp_path / MANIFEST).is_file()
