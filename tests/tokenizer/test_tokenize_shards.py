"""`tokenize_shards`: frame shards -> token shards with a random-init tiny tokenizer (and a fake
LAM), read back through TokenLoader; resume, refusals and corrupt input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor
from webdataset.writer import TarWriter

from data_pipeline.loader import collate
from data_pipeline.manifest import (
    MANIFEST,
    ShardRecord,
    merge_split,
    shard_name,
    split_entry,
)
from data_pipeline.schema import Clip, encode_sample
from data_pipeline.shard_job import TAR_MTIME
from data_pipeline.shard_source import iter_shard_samples, log_bad_shard
from data_pipeline.token_shards import (
    TokenClip,
    TokenLoader,
    TokenLoaderConfig,
    decode_token_sample,
)
from tokenizer.config import tokenizer_preset
from tokenizer.model import VideoTokenizer
from tokenizer.tokenize_shards import tokenize_shards
from worldsim.io.files import file_sha256

T = 4  # frames per clip; the tiny preset takes 16x16 frames, up to 8 of them


def write_frame_folder(folder: Path, counts: list[int]) -> dict[str, Clip]:
    """Frame shards (odd clips with discrete actions) and their manifest, as the shard job
    writes them."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    clips: dict[str, Clip] = {}
    records = []
    for s, count in enumerate(counts):
        path = folder / shard_name("train", s)
        with TarWriter(str(path), encoder=False, mtime=TAR_MTIME) as sink:
            for i in range(count):
                key = f"ep{s}-{i:06d}"
                actions = rng.integers(0, 15, T) if i % 2 else None
                frames = rng.integers(0, 256, (T, 16, 16, 3), dtype=np.uint8)
                clips[key] = Clip(frames, actions, {"fps": 15.0, "source": "test"})
                sink.write(encode_sample(key, clips[key]))
        records.append(ShardRecord(s, path.name, count, file_sha256(path), [], [T, 16, 16, 3]))
    space = {"type": "discrete", "n": 15}
    merge_split(folder, "train", split_entry(records, {"sources": ["test"]}, space))
    return clips


def save_tokenizer(folder: Path, seed: int) -> VideoTokenizer:
    torch.manual_seed(seed)
    model = VideoTokenizer(tokenizer_preset("tiny"))
    model.save_pretrained(folder)
    return model


class FakeLAM:
    """Deterministic stand-in for simulator's LatentActionModel: brightness change buckets."""

    num_actions = 6

    def encode(self, frames_BTCHW: Tensor) -> Tensor:
        change = (frames_BTCHW[:, 1:] - frames_BTCHW[:, :-1]).mean(dim=(2, 3, 4))  # (B, T-1)
        return (change * 1000).floor().long() % self.num_actions


def read_token_folder(folder: Path) -> dict[str, TokenClip]:
    manifest = json.loads((folder / MANIFEST).read_text())
    out = {}
    for shard in manifest["splits"]["train"]["shards"]:
        for sample in iter_shard_samples(str(folder / shard["name"]), log_bad_shard):
            out[sample["__key__"]] = decode_token_sample(sample)
    return out


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, VideoTokenizer, dict[str, Clip]]:
    frames = tmp_path / "frames"
    clips = write_frame_folder(frames, [3, 2])
    ckpt = tmp_path / "tok"
    return frames, ckpt, save_tokenizer(ckpt, seed=0), clips


def test_tokens_match_encode_actions_carried(setup, tmp_path: Path) -> None:
    frames, ckpt, model, clips = setup
    report = tokenize_shards(model, str(frames), tokenizer_checkpoint=ckpt, batch_size=2)
    out = Path(report.out)
    assert (
        out.parent == frames
        and out.name == f"tokens-{file_sha256(next(ckpt.glob('*.safetensors')))[:8]}"
    )
    assert (report.shards_written, report.clips, report.clips_written) == (2, 5, 5)
    got = read_token_folder(out)
    assert list(got) == list(clips)  # same keys, stored order
    with torch.no_grad():  # the writer's batches: 2 clips at a time within each shard
        for group in (["ep0-000000", "ep0-000001"], ["ep0-000002"], ["ep1-000000", "ep1-000001"]):
            want = model.encode(collate([clips[k] for k in group], group, None).frames)
            assert [got[k].tokens.tolist() for k in group] == want.tolist()
    for key, clip in clips.items():
        tok = got[key]
        assert tok.tokens.dtype == np.uint16 and tok.latent_actions is None
        assert (tok.actions is None) == (clip.actions is None)
        assert tok.actions is None or tok.actions.tolist() == clip.actions.tolist()
        assert tok.meta["fps"] == 15.0 and "lam" not in tok.meta
        assert tok.meta["tokenizer"]["num_codes"] == 125 and tok.meta["tokenizer"]["grid"] == 4
    entry = json.loads((out / MANIFEST).read_text())["splits"]["train"]
    frame_entry = json.loads((frames / MANIFEST).read_text())["splits"]["train"]
    assert entry["source"]["content_hash"] == frame_entry["content_hash"]
    assert entry["token_shape"] == [T, 4, 4] and entry["action_space"]["n"] == 15

    loader = TokenLoader(TokenLoaderConfig(shards=str(out), batch_size=5, num_workers=0))
    assert loader.token_identity.tokenizer_sha256 == report.identity.tokenizer_sha256
    batch = next(iter(loader))
    assert batch.tokens.shape == (5, T, 4, 4) and batch.action_mask.sum() == 2


def test_latent_actions_from_a_lam(setup, tmp_path: Path) -> None:
    frames, ckpt, model, clips = setup
    lam_ckpt = tmp_path / "lam"
    lam_ckpt.mkdir()
    save_file({"w": torch.zeros(2)}, str(lam_ckpt / "model.safetensors"))
    report = tokenize_shards(
        model, str(frames), tokenizer_checkpoint=ckpt, lam=FakeLAM(), lam_checkpoint=lam_ckpt
    )
    assert "-lam-" in Path(report.out).name
    got = read_token_folder(Path(report.out))
    latent = {k: got[k].latent_actions for k in clips}
    for key, clip in clips.items():
        want = FakeLAM().encode(collate([clip], [key], None).frames)[0]
        assert (a := latent[key]) is not None and a.tolist() == want.tolist()
        assert got[key].meta["lam"]["num_actions"] == 6
    assert len({str(a) for a in latent.values()}) > 1  # the fake LAM distinguishes clips
    batch = next(iter(TokenLoader(TokenLoaderConfig(shards=report.out, num_workers=0))))
    assert batch.latent_actions is not None and batch.latent_actions.shape == (5, T - 1)


def test_rerun_skips_finished_shards_and_refuses_another_tokenizer(setup, tmp_path: Path) -> None:
    frames, ckpt, model, _ = setup
    out = tmp_path / "tokens"
    first = tokenize_shards(model, str(frames), out=out, tokenizer_checkpoint=ckpt)
    again = tokenize_shards(model, str(frames), out=out, tokenizer_checkpoint=ckpt)
    assert (again.shards_written, again.shards_skipped, again.clips_written) == (0, 2, 0)
    (out / "train-000001.tar").unlink()  # as if killed while writing it
    resumed = tokenize_shards(model, str(frames), out=out, tokenizer_checkpoint=ckpt)
    assert (resumed.shards_written, resumed.shards_skipped, resumed.clips_written) == (1, 1, 2)
    assert resumed.content_hash == first.content_hash  # byte-identical shards

    other = save_tokenizer(tmp_path / "tok2", seed=1)
    other_sha = file_sha256(next((tmp_path / "tok2").glob("*.safetensors")))
    with pytest.raises(ValueError, match=f"{first.identity.tokenizer_sha256}.*{other_sha}"):
        tokenize_shards(other, str(frames), out=out, tokenizer_checkpoint=tmp_path / "tok2")


def test_corrupt_frame_shards_are_named(setup, tmp_path: Path) -> None:
    frames, ckpt, model, _ = setup
    shard = frames / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    with pytest.raises(ValueError, match="train-000001.tar does not match the sha256"):
        tokenize_shards(model, str(frames), out=tmp_path / "a", tokenizer_checkpoint=ckpt)
    (frames / MANIFEST).unlink()  # loose shards: the read itself must catch the truncation
    with pytest.raises(ValueError, match="train-000001.tar is corrupt or truncated"):
        tokenize_shards(
            model, str(frames / "train-*.tar"), out=tmp_path / "b", tokenizer_checkpoint=ckpt
        )


def test_bad_lam_output_and_arguments_are_refused(setup, tmp_path: Path) -> None:
    frames, ckpt, model, _ = setup

    class WildLAM(FakeLAM):
        def encode(self, frames_BTCHW: Tensor) -> Tensor:
            return super().encode(frames_BTCHW) + 6

    with pytest.raises(ValueError, match="outside its \\[0, 6\\) actions"):
        tokenize_shards(
            model, str(frames), tokenizer_checkpoint=ckpt, lam=WildLAM(), lam_checkpoint=ckpt
        )
    with pytest.raises(ValueError, match="together with its checkpoint"):
        tokenize_shards(model, str(frames), tokenizer_checkpoint=ckpt, lam=FakeLAM())
    with pytest.raises(ValueError, match="no \\*.safetensors"):
        tokenize_shards(model, str(frames), tokenizer_checkpoint=tmp_path)
