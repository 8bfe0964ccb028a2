"""A delta renderer told the controls (`action_dim`), on the tiny preset: it reads them beside
the tokens, refuses frames without them, keeps its flow from the tokens when asked, learns to
move a block by its control in seconds, and trains and evaluates through the commands on shards
of continuous controls."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch
import webdataset as wds

from commands.main import main
from data_pipeline.schema import Clip, encode_sample
from tests.tokenizer.test_delta import SIZE, clip
from tokenizer.delta import DeltaTokenizer
from tokenizer.delta_config import delta_tokenizer_preset


def told_controls() -> DeltaTokenizer:
    """A tiny renderer told 2 controls a frame, its output layer random (a fresh one copies)."""
    torch.manual_seed(0)
    model = DeltaTokenizer(delta_tokenizer_preset("tiny", action_dim=2)).eval()
    with torch.no_grad():
        for p in model.out.parameters():
            p.normal_(0, 0.1)
    return model


def test_a_renderer_told_the_controls_renders_by_them() -> None:
    model, frames = told_controls(), clip()
    gen = torch.Generator().manual_seed(3)
    actions = torch.rand(2, 5, 2, generator=gen) * 2 - 1
    tokens = model.encode(frames, actions)
    assert torch.equal(tokens, model.encode(frames, actions[:, :4]))  # the last one is unused
    assert not torch.equal(tokens, model.encode(frames, -actions))  # the encoder reads them
    _, _, state = model.start(frames[:, :1], actions=actions[:, :0])
    left = model.decode_step(tokens[:, 1], state, action=actions[:, 0])[0]
    right = model.decode_step(tokens[:, 1], state, action=-actions[:, 0])[0]
    assert (left - right).abs().amax() > 1e-3  # same tokens, other controls: another frame
    recon = model.reconstruct(frames, tokens, actions)
    torch.testing.assert_close(recon[:, 1], left)  # action t leads from frame t to t + 1
    model.train()
    model.loss(frames, actions, closed_loop=0.5).loss.backward()
    assert model.action_in is not None and model.action_in.weight.grad is not None
    assert float(model.action_in.weight.grad.abs().sum()) > 0  # the controls are trained through
    assert float(model.cond[0].weight.grad[:, -2:].abs().sum()) > 0


def test_a_renderer_told_the_controls_refuses_frames_without_them() -> None:
    told, model = told_controls(), DeltaTokenizer(delta_tokenizer_preset("tiny"))
    with pytest.raises(ValueError, match=r"told 2 controls a frame .*pass the actions"):
        told.encode(clip())
    with pytest.raises(ValueError, match=r"expected float controls \(B=2, T in \[4, 5\], D=2\)"):
        told.encode(clip(), torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match="expected float controls"):
        told.encode(clip(), torch.zeros(2, 5, dtype=torch.long))
    frames = clip()  # a renderer told no controls ignores them
    torch.testing.assert_close(model.encode(frames, torch.ones(2, 5, 2)), model.encode(frames))


def test_a_flow_kept_from_the_tokens_moves_by_the_controls_alone() -> None:
    torch.manual_seed(0)
    model = DeltaTokenizer(delta_tokenizer_preset("tiny", action_dim=2, flow_from_tokens=False))
    assert model.out.out_channels == 3 and model.flow_head is not None  # flow: its own head
    with torch.no_grad():  # a flow that moves pixels and a residual that reads the tokens
        for p in [*model.flow_head.parameters(), *model.out.parameters()]:
            p.normal_(0, 0.5)
    flows: list[torch.Tensor] = []
    model.flow_head.register_forward_hook(lambda module, args, out: flows.append(out))
    gen = torch.Generator().manual_seed(1)
    codes = torch.rand(2, 2, 4, 2, generator=gen) * 2 - 1  # two sets of tokens' codes
    one, other = torch.randn(2, 2, 2, generator=gen)  # two sets of controls
    frames = clip()
    render = partial(model.render, frames[:, 0], frames[:, 1])
    assert (render(codes[0], one) - render(codes[1], one)).abs().amax() > 1e-3  # residual: yes
    assert torch.equal(flows[0], flows[1])  # the flow: the tokens have no say
    render(codes[0], other)
    assert (flows[2] - flows[0]).abs().amax() > 1e-3  # the controls move it
    with pytest.raises(ValueError, match="flow_from_tokens=False needs action_dim >= 1"):
        delta_tokenizer_preset("tiny", flow_from_tokens=False)


def steered_blocks(b: int, gen: torch.Generator, t: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """A white 4x4 block on black that each step moves 2 px times its control (-1, 0 or 1):
    frames (b, t, 3, SIZE, SIZE) and the controls (b, t, 1), control t leading to frame t+1."""
    controls = torch.randint(-1, 2, (b, t, 1), generator=gen).float()
    x = torch.randint(5, SIZE - 9, (b,), generator=gen)
    frames = -torch.ones(b, t, 3, SIZE, SIZE)
    for i in range(t):
        for j in range(b):
            frames[j, i, :, 6:10, int(x[j]) : int(x[j]) + 4] = 1.0
        x = (x + 2 * controls[:, i, 0].long()).clamp(0, SIZE - 4)
    return frames, controls


def test_a_renderer_told_the_controls_learns_to_move_by_them() -> None:
    torch.manual_seed(0)
    model = DeltaTokenizer(delta_tokenizer_preset("tiny", action_dim=1, flow_from_tokens=False))
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        frames, controls = steered_blocks(8, gen, t=4)
        opt.zero_grad()
        model.loss(frames, controls, closed_loop=0.5).loss.backward()
        opt.step()
    frames, controls = steered_blocks(32, torch.Generator().manual_seed(99))
    with torch.no_grad():
        still = model.encode(frames, controls)[:, :1].expand(-1, frames.shape[1], -1, -1)

        def error(told: torch.Tensor) -> float:  # "no change" tokens: the controls alone
            return float((model.reconstruct(frames, still, told) - frames).pow(2).mean())

        assert error(controls) < 0.25 * error(-controls)  # 0.008 against 0.28 when written


def test_train_and_evaluate_a_renderer_told_the_controls(tmp_path: Path, capsys) -> None:
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 16), ("test", 8)):
        frames, controls = steered_blocks(n, gen, t=4)
        pixels = ((frames.permute(0, 1, 3, 4, 2) + 1) * 127.5).round().to(torch.uint8).numpy()
        with wds.TarWriter(str(tmp_path / f"{split}-000000.tar")) as sink:
            for i in range(n):
                sink.write(encode_sample(f"{split}{i}", Clip(pixels[i], controls[i].numpy(), {})))
    run, report = tmp_path / "run", tmp_path / "eval.json"
    assert main(["train", "delta", "--config", "tiny", f"data.shards={tmp_path}",
                 f"train.out_dir={run}", "train.steps=4", "model.action_dim=1",
                 "model.flow_from_tokens=false"]) == 0  # fmt: skip
    assert main(["eval", "tokenizer", "--checkpoint", str(run / "final"), "--shards",
                 str(tmp_path), "--out", str(report)]) == 0  # fmt: skip
    figures = json.loads(report.read_text())
    assert figures["clips"] == 8 and figures["controls_only_pooled_psnr_db"] is not None
    wrong = [f"train.out_dir={tmp_path / 'wrong'}", "train.steps=1", "model.action_dim=2"]
    assert main(["train", "delta", "--config", "tiny", f"data.shards={tmp_path}", *wrong]) != 0
    assert "expected float controls (B=4, T in [3, 4], D=2)" in capsys.readouterr().err
