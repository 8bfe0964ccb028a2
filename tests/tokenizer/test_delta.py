"""The delta tokenizer on the tiny preset: token shapes, an untrained renderer copies, streaming
equals `reconstruct`, teacher forcing keeps the real frame, save/load through the registry, a
scrolling texture learned in seconds, and `worldsim train delta` trains and resumes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from commands.main import main
from data_pipeline.loader import Batch
from tokenizer.delta import DeltaTokenizer, warp
from tokenizer.delta_config import DeltaTokenizerConfig, delta_tokenizer_preset
from tokenizer.delta_task import DeltaTask, DeltaTrainConfig
from tokenizer.registry import load_tokenizer

SIZE = 16


def clip(b: int = 2, t: int = 5, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, 3, SIZE, SIZE, generator=gen) * 2 - 1


def scrolling(b: int, t: int, gen: torch.Generator) -> torch.Tensor:
    """Clips of a smooth random texture scrolling 1 px a frame, left or right per clip."""
    coarse = torch.rand(b, 3, 6, 6, generator=gen) * 2 - 1
    wide = torch.nn.functional.interpolate(coarse, size=(SIZE, 3 * SIZE), mode="bilinear")
    sign = torch.randint(0, 2, (b,), generator=gen) * 2 - 1
    frames = [
        torch.stack([wide[i, :, :, SIZE + sign[i] * k : 2 * SIZE + sign[i] * k] for i in range(b)])
        for k in range(t)
    ]
    return torch.stack(frames, dim=1)


@pytest.fixture()
def model() -> DeltaTokenizer:
    torch.manual_seed(0)
    return DeltaTokenizer(delta_tokenizer_preset("tiny")).eval()


def test_tokens_have_the_dynamics_grid_and_frame_0_is_no_change(model) -> None:
    frames = clip()
    tokens = model.encode(frames)
    assert tokens.shape == (2, 5, 2, 2) and tokens.dtype == torch.int64
    assert int(tokens.min()) >= 0 and int(tokens.max()) < model.num_codes == 25
    still = model.encode(frames[:, :1].expand(-1, 4, -1, -1, -1))
    assert torch.equal(still, still[:, :1].expand_as(still))  # a still clip: "no change" throughout
    assert torch.equal(still[:, 0], tokens[:, 0])  # frame 0 reads frame 0 alone


def test_an_untrained_renderer_copies_the_last_frame(model) -> None:
    frames = clip()
    tokens, shown, state = model.start(frames[:, :3])
    assert torch.equal(shown, frames[:, :3]) and tokens.shape == (2, 3, 2, 2)
    frame, _ = model.decode_step(tokens[:, -1], state)
    torch.testing.assert_close(frame, frames[:, 2])
    identity = warp(frames[:, 0], torch.zeros(2, 2, SIZE, SIZE))
    torch.testing.assert_close(identity, frames[:, 0])
    for mode in ("bilinear", "bicubic"):  # whole-pixel shifts are exact either way
        shifted = warp(frames[:, 0], torch.ones(2, 2, SIZE, SIZE), mode)  # one right, one down
        torch.testing.assert_close(shifted[..., :-1, :-1], frames[:, 0, :, 1:, 1:])


def test_bicubic_warps_blur_less_and_through_time_reaches_earlier_renders() -> None:
    gen = torch.Generator().manual_seed(0)
    texture = scrolling(1, 1, gen)[:, 0]
    half = torch.full((1, 2, SIZE, SIZE), 0.5)
    sharpness = {}
    for mode in ("bilinear", "bicubic"):  # a half-pixel shift there and back, 8 times
        frame = texture
        for _ in range(8):
            frame = warp(warp(frame, half, mode), -half, mode)
        sharpness[mode] = float((frame - texture)[..., 4:-4, 4:-4].pow(2).mean())
    assert sharpness["bicubic"] < sharpness["bilinear"] / 2, sharpness
    torch.manual_seed(0)
    model = DeltaTokenizer(delta_tokenizer_preset("tiny", interpolation="bicubic"))
    with torch.no_grad():
        for p in model.out.parameters():  # a renderer that changes frames
            p.normal_(0, 0.1)
    frames = clip(t=4)
    grads = {}
    for closed_loop in (0.0, 1.0):
        for through_time in (False, True):
            model.zero_grad()
            out = model.loss(frames, closed_loop=closed_loop, through_time=through_time)
            out.loss.backward()
            loss = float(out.loss.detach())
            grads[closed_loop, through_time] = model.out.weight.grad.clone(), loss
    for closed_loop in (0.0, 1.0):  # the same loss; gradients differ only on own renders
        (detached, loss_a), (through, loss_b) = grads[closed_loop, False], grads[closed_loop, True]
        assert loss_a == pytest.approx(loss_b)
        assert torch.allclose(detached, through) == (closed_loop == 0.0)


def test_streaming_equals_reconstruct_and_observe_keeps_the_real_frame(model) -> None:
    with torch.no_grad():
        for p in model.out.parameters():  # a renderer that changes frames
            p.normal_(0, 0.1)
        frames = clip(t=4)
        tokens = model.encode(frames)
        _, _, state = model.start(frames[:, :1])
        streamed = [frames[:, 0]]
        for t in range(1, 4):
            frame, state = model.decode_step(tokens[:, t], state)
            streamed.append(frame)
        torch.testing.assert_close(torch.stack(streamed, 1), model.reconstruct(frames))
        assert not torch.allclose(streamed[2], frames[:, 2], atol=1e-3)
        _, _, state = model.start(frames[:, :1])
        _, observed = model.decode_step(tokens[:, 1], state, observed=frames[:, 1])
        assert torch.equal(observed.current_BCHW, frames[:, 1])


def test_changed_pixels_weigh_more_in_the_loss(model) -> None:
    frames = clip(b=1, t=3)[:, :1].repeat(1, 3, 1, 1, 1)  # a still clip...
    frames[:, 2, :, 4:6, 4:6] = -frames[:, 2, :, 4:6, 4:6].sign()  # ...where 4 pixels change
    plain = model.loss(frames)  # the untrained renderer copies: wrong on those 4 pixels only
    weighted = model.loss(frames, change_weight=10.0)
    assert torch.equal(plain.loss, plain.metrics["mse"])
    torch.testing.assert_close(weighted.metrics["mse"], plain.metrics["mse"])
    assert float(weighted.loss.detach()) > 5 * float(plain.loss.detach())


def test_still_clips_hold_the_first_frame_in_training_only(model) -> None:
    frames = clip(t=4)
    batch = Batch(frames, torch.zeros(2, 4, dtype=torch.long), torch.ones(2, dtype=torch.bool), [])
    task = DeltaTask(DeltaTrainConfig(preset="tiny", still_clips=1.0))
    evaluated = task.loss(model, batch).loss.detach()  # held-out batches stay as they are
    torch.testing.assert_close(evaluated, model.loss(frames, closed_loop=1.0).loss.detach())
    assert float(evaluated) > 0.1
    model.train()  # the untrained renderer copies its last frame: exact on a still clip
    assert float(task.loss(model, batch).loss.detach()) == 0.0
    with pytest.raises(ValueError, match=r"still_clips must be in \[0, 1\]"):
        DeltaTask(DeltaTrainConfig(preset="tiny", still_clips=2.0))


@pytest.mark.parametrize("action_dim", [0, 2])
def test_renderer_only_training_keeps_the_tokens(action_dim: int) -> None:
    torch.manual_seed(0)
    cfg = DeltaTrainConfig(preset="tiny", renderer_only=True, model={"action_dim": action_dim})
    model = DeltaTask(cfg).build_model()
    frames = clip(t=4)
    controls = torch.randn(2, 4, action_dim) if action_dim else None
    before = model.encode(frames, controls)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model.loss(frames, controls).loss.backward()
        opt.step()
    assert torch.equal(model.encode(frames, controls), before)
    assert not any(p.requires_grad for p in model.change_encoder.parameters())
    assert model.out.weight.requires_grad and float(model.out.weight.detach().abs().sum()) > 0


def test_save_and_load_through_the_registry(model, tmp_path) -> None:
    model.save_pretrained(tmp_path / "delta")
    loaded = load_tokenizer(tmp_path / "delta")
    assert isinstance(loaded, DeltaTokenizer)
    assert torch.equal(loaded.encode(clip()), model.encode(clip()))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json missing"):
        load_tokenizer(tmp_path / "empty")


def test_bad_configs_and_inputs_are_named(model) -> None:
    with pytest.raises(ValueError, match="tokens must be a square number"):
        DeltaTokenizerConfig(tokens=3).validate()
    with pytest.raises(ValueError, match="multiple of 16"):
        DeltaTokenizerConfig(image_size=24).validate()
    with pytest.raises(ValueError, match="interpolation must be 'bilinear' or 'bicubic'"):
        DeltaTokenizerConfig(interpolation="nearest").validate()
    with pytest.raises(ValueError, match="takes 16x16"):
        model.encode(torch.zeros(1, 2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 25\)"):
        model.decode_step(torch.full((2, 2, 2), 25), model.start(clip())[2])
    with pytest.raises(ValueError, match="clips of >= 2 frames"):
        model.loss(clip(t=1))


def test_the_renderer_learns_a_scroll_that_copying_misses() -> None:
    torch.manual_seed(0)
    model = DeltaTokenizer(delta_tokenizer_preset("tiny"))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        out = model.loss(scrolling(8, 4, gen))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    with torch.no_grad():
        test = scrolling(16, 6, torch.Generator().manual_seed(99))
        metrics = model.eval().loss(test).metrics
    # Each frame rendered from the real previous ones, against copying the last of them.
    assert metrics["pooled_psnr"] > metrics["copy_pooled_psnr"] + 3.0, metrics
    assert metrics["usage"] > 0.1  # the tokens are in use, not stuck on one code


def test_train_resume_load_encode(tiny_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"

    def train(steps: int) -> int:
        return main(
            ["train", "delta", "--config", "tiny", f"data.shards={tiny_shards}",
             f"train.out_dir={run}", f"train.steps={steps}", "train.checkpoint_every=4"]
        )  # fmt: skip

    assert train(8) == 0 and train(12) == 0  # the second resumes at step 8
    with open(run / "train.csv") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == [5, 10]
    model = load_tokenizer(run / "final")
    assert isinstance(model, DeltaTokenizer)
    assert model.encode(torch.zeros(1, 3, 3, SIZE, SIZE)).shape == (1, 3, 2, 2)
    report = tmp_path / "eval.json"
    assert main(["eval", "tokenizer", "--checkpoint", str(run / "final"), "--shards",
                 str(tiny_shards), "--split", "train", "--out", str(report)]) == 0  # fmt: skip
    figures = json.loads(report.read_text())
    assert figures["clips"] > 0 and list(figures["still_pooled_psnr_db"]) == ["1", "4", "16", "64"]
