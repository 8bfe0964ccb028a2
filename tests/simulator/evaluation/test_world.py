"""World-model evaluation: hand-computed metrics, and a fake world where the answers are known.

The fake world: a frame is a 2x2 grid of flat quadrants, each at one of K brightness levels
(plus a little noise); the fake tokenizer reads the levels as tokens. Each step, every level
moves by the clip's action a_t (mod K). The fake LAM reads a_t back from the pixels, and the fake
dynamics applies the action it is given, so with LAM-inferred (or true) actions a rollout must
reproduce the real tokens exactly and score the tokenizer's own PSNR.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds
from einops import rearrange, repeat
from PIL import Image
from torch import Tensor, nn

from data_pipeline.loader import Batch
from data_pipeline.schema import Clip, encode_sample
from simulator.dynamics import ActionInputs, DynamicsModel
from simulator.dynamics_config import DynamicsConfig, dynamics_preset
from simulator.evaluation.figures import write_action_sheet, write_psnr_plot
from simulator.evaluation.metrics import (
    CurveMeter,
    delta_t_psnr,
    entropy_bits,
    frame_psnr_per_frame,
    mutual_information_bits,
)
from simulator.evaluation.world import (
    WorldEvalConfig,
    WorldReport,
    eval_world_command,
    evaluate_world,
)
from simulator.lam import LatentActionModel
from simulator.lam_config import lam_preset
from simulator.sampling import SamplingConfig
from tokenizer.config import tokenizer_preset
from tokenizer.model import VideoTokenizer
from worldsim.nn.attention import set_query_by_query

K, GRID, SIDE, NUM_ACTIONS = 11, 2, 4, 4  # levels (= codes), tokens per side, pixels, actions


class FakeTokenizer(nn.Module):
    num_codes = K

    def encode(self, frames_BTCHW: Tensor) -> Tensor:
        quadrants = F.avg_pool2d(rearrange(frames_BTCHW, "b t c h w -> (b t) c h w"), SIDE // 2)
        levels = ((quadrants.mean(dim=1) + 1) / 2 * (K - 1)).round().long()
        return rearrange(levels, "(b t) h w -> b t h w", b=frames_BTCHW.shape[0])

    def decode(self, tokens_BThw: Tensor) -> Tensor:
        pixels = tokens_BThw.float() / (K - 1) * 2 - 1
        up = repeat(pixels, "b t h w -> b t c (h p) (w q)", c=3, p=SIDE // 2, q=SIDE // 2)
        return up.contiguous()

    def decode_start(self, tokens_BThw: Tensor) -> tuple[Tensor, None]:
        return self.decode(tokens_BThw), None  # frames decode independently: no state

    def decode_step(self, tokens_Bhw: Tensor, state: None) -> tuple[Tensor, None]:
        return self.decode(tokens_Bhw[:, None])[:, 0], state


class FakeLAM(nn.Module):
    num_actions = NUM_ACTIONS

    def encode(self, frames_BTCHW: Tensor) -> Tensor:
        levels = FakeTokenizer().encode(frames_BTCHW)[:, :, 0, 0]  # (B, T)
        return (levels[:, 1:] - levels[:, :-1]) % K


class FakeDynamics(nn.Module):
    """Sharp logits on (previous frame + the given action) mod K, or flat logits (`noisy`)."""

    def __init__(self, source: str = "latent", noisy: bool = False, max_frames: int = 16) -> None:
        super().__init__()
        self.cfg = DynamicsConfig(
            num_codes=K, grid=GRID, max_frames=max_frames, width=8, num_heads=1,
            action_sources=[source], num_latent_actions=NUM_ACTIONS,
            num_discrete_actions=NUM_ACTIONS,
        )  # fmt: skip
        self.source, self.noisy = source, noisy
        self.grid, self.num_codes = GRID, K

    def embed(self, tokens_BThw: Tensor, mask: Tensor, actions: ActionInputs) -> Tensor:
        a_BA = getattr(actions, self.source)
        target = (tokens_BThw[:, :-1] + a_BA[:, : tokens_BThw.shape[1] - 1, None, None]) % K
        logits = 50.0 * F.one_hot(target, K).float() * (not self.noisy)
        logits = torch.cat([torch.zeros_like(logits[:, :1]), logits], dim=1)
        return rearrange(logits, "b t h w v -> b t (h w) v")

    def transform(self, x: Tensor) -> Tensor:
        return x

    def head(self, x: Tensor) -> Tensor:
        return x


def fake_batch(b: int = 3, t: int = 16, seed: int = 0, with_actions: bool = True) -> Batch:
    g = torch.Generator().manual_seed(seed)
    actions = torch.randint(NUM_ACTIONS, (b, t), generator=g)  # (B, T); the last leads outside
    start = torch.randint(K, (b, 1, GRID, GRID), generator=g)
    levels = (start + torch.cumsum(actions, 1)[:, :-1, None, None].expand(-1, -1, GRID, GRID)) % K
    levels = torch.cat([start, levels], dim=1)  # (B, T, h, w)
    clean = FakeTokenizer().decode(levels)
    noise = (torch.rand(clean.shape, generator=g) - 0.5) * 0.04
    return Batch(
        frames=(clean + noise).clamp(-1, 1),
        actions=actions if with_actions else torch.zeros_like(actions),
        action_mask=torch.full((b,), with_actions),
        keys=[f"clip{i}" for i in range(b)],
    )


def run(dynamics: FakeDynamics, batches: list[Batch] | None = None, **cfg) -> WorldReport:
    cfg.setdefault("sampling", SamplingConfig(steps=2))
    cfg.setdefault("kv_cache", False)  # the fakes compute logits without a transformer
    loader = batches if batches is not None else [fake_batch(seed=0), fake_batch(seed=1)]
    return evaluate_world(FakeTokenizer(), dynamics, FakeLAM(), loader, WorldEvalConfig(**cfg))


def test_frame_psnr_by_hand() -> None:
    target = torch.zeros(1, 3, 3, 2, 2)
    pred = torch.stack([torch.full((3, 2, 2), v) for v in (0.2, 0.02, 3.0)])[None]  # (1,3,C,H,W)
    # MSE 0.04 -> 10 log10(4 / 0.04) = 20 dB; 4e-4 -> 40 dB; 3.0 clamps to 1: MSE 1 -> 6.0206 dB.
    psnr = frame_psnr_per_frame(pred, target)
    torch.testing.assert_close(psnr, torch.tensor([[20.0, 40.0, 10 * math.log10(4)]]))


def test_delta_t_psnr_by_hand() -> None:
    real = torch.zeros(2, 6, 3, 2, 2)
    inferred, random = torch.zeros_like(real), torch.zeros_like(real)
    inferred[0, 4], random[0, 4] = 0.2, 0.4  # 20 dB vs 10 log10(4 / 0.16) = 13.9794 dB
    inferred[1, 4], random[1, 4] = 0.02, -0.2  # 40 dB vs 20 dB
    random[:, 3] = 0.9  # frames other than t = 4 must not count
    expected = ((20 - 13.979400) + (40 - 20)) / 2  # 13.0103 dB
    assert delta_t_psnr(real, inferred, random, t=4) == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="t=4 needs clips of at least 5 frames.*got 4"):
        delta_t_psnr(real[:, :4], inferred[:, :4], random[:, :4], t=4)


def test_mutual_information_by_hand() -> None:
    # Two latent actions, four true ones: the latent action names the pair {0, 1} or {2, 3}.
    joint = torch.tensor([[5, 5, 0, 0], [0, 0, 5, 5]])
    assert entropy_bits(joint.sum(0)) == pytest.approx(2.0)
    assert mutual_information_bits(joint) == pytest.approx(1.0)  # one of the two bits
    assert mutual_information_bits(torch.full((3, 4), 7)) == pytest.approx(0.0, abs=1e-12)


def test_curve_meter_averages_over_clips() -> None:
    meter = CurveMeter()
    meter.add(torch.tensor([[10.0, 20.0], [20.0, 30.0]]))
    meter.add(torch.tensor([[40.0, 10.0]]))
    assert meter.mean() == pytest.approx([70 / 3, 20.0]) and meter.clips == 3
    with pytest.raises(ValueError, match="curve length changed from 2 to 3"):
        meter.add(torch.zeros(1, 3))


def test_perfect_latent_dynamics_scores_the_tokenizer_ceiling() -> None:
    report = run(FakeDynamics("latent"), horizon=8)
    curves = report.curves
    assert set(curves) == {"tokenizer", "copy_last_frame", "lam_actions", "random_actions"}
    assert all(len(c) == 8 for c in curves.values()) and report.clips == 6
    assert curves["lam_actions"] == pytest.approx(curves["tokenizer"], abs=1e-9)
    assert report.next_frame_psnr_db == pytest.approx(report.tokenizer_psnr_db, abs=1e-9)
    assert report.tokenizer_psnr_db > 35  # only the +-0.02 noise is lost
    for baseline in ("random_actions", "copy_last_frame"):
        assert sum(curves[baseline][2:]) / 6 < report.tokenizer_psnr_db - 10
    assert report.next_frame_copy_psnr_db < 25
    expected = curves["lam_actions"][3] - curves["random_actions"][3]
    assert report.delta_t_psnr_db == pytest.approx(expected, abs=1e-4) and expected > 10
    assert report.delta_t_actions == "latent" and report.conditioning == ["latent"]
    assert sum(report.latent_action_counts) == 6 * 8 and len(report.latent_action_counts) == 4
    # The fake LAM reads the true actions exactly, so it carries all of their information.
    assert report.true_action_entropy_bits is not None and report.true_action_entropy_bits > 1.5
    assert report.latent_true_mutual_info_bits == pytest.approx(report.true_action_entropy_bits)
    assert report.warnings() == {}


def test_true_action_dynamics_gets_true_and_random_curves() -> None:
    report = run(FakeDynamics("discrete"), horizon=6)
    assert set(report.curves) == {"tokenizer", "copy_last_frame", "true_actions", "random_actions"}
    assert report.curves["true_actions"] == pytest.approx(report.curves["tokenizer"], abs=1e-9)
    assert report.delta_t_actions == "discrete" and report.delta_t_psnr_db > 10
    with pytest.raises(ValueError, match="conditions on true actions but 2 clips"):
        run(FakeDynamics("discrete"), [fake_batch(b=2, with_actions=False)], horizon=6)


class SeparableFakeDynamics(FakeDynamics):
    """A fake trained with source dropout on latent and true actions: it must be steered by one
    source at a time."""

    def __init__(self) -> None:
        super().__init__("latent")
        self.cfg.action_sources, self.cfg.source_dropout = ["latent", "discrete"], 0.5

    def embed(self, tokens_BThw: Tensor, mask: Tensor, actions: ActionInputs) -> Tensor:
        given = [s for s in ("latent", "discrete") if getattr(actions, s) is not None]
        assert len(given) == 1, given
        self.source = given[0]
        return super().embed(tokens_BThw, mask, actions)


def test_separable_dynamics_gets_latent_and_true_action_curves() -> None:
    report = run(SeparableFakeDynamics(), horizon=6)
    assert set(report.curves) == {
        "tokenizer", "copy_last_frame", "lam_actions", "random_actions", "true_actions"
    }  # fmt: skip
    for steered in ("lam_actions", "true_actions"):
        assert report.curves[steered] == pytest.approx(report.curves["tokenizer"], abs=1e-9)
    assert report.delta_t_actions == "latent" and report.delta_t_psnr_db > 10


def test_context_slides_past_max_frames() -> None:
    report = run(FakeDynamics("latent", max_frames=4), horizon=9)
    assert report.curves["lam_actions"] == pytest.approx(report.curves["tokenizer"], abs=1e-9)
    assert report.next_frame_psnr_db == pytest.approx(report.tokenizer_psnr_db, abs=1e-9)


def test_deterministic_for_a_seed_and_varies_with_it() -> None:
    noisy = FakeDynamics("latent", noisy=True)
    first, again = run(noisy, seed=3, horizon=5), run(noisy, seed=3, horizon=5)
    assert first == again
    assert run(noisy, seed=4, horizon=5).curves != first.curves
    assert "WARNING: lam_actions loses to copy-the-last-frame" in first.render()


def test_report_json_round_trip_and_render(tmp_path: Path) -> None:
    report = run(FakeDynamics("latent"), horizon=5, max_batches=1)
    assert report.clips == 3
    assert WorldReport.from_json(report.to_json()) == report
    with pytest.raises(ValueError, match="not a world-model report"):
        WorldReport.from_json(json.dumps({"clips": 3}))
    text = report.render()
    assert "ΔtPSNR (t=4, latent actions" in text and "next-frame PSNR" in text
    path = write_psnr_plot(report.curves, report.plot_title(), tmp_path / "plot.png")
    assert Image.open(path).size == (720, 420) and not list(tmp_path.glob("*.tmp"))


def test_bad_inputs_name_the_lengths() -> None:
    with pytest.raises(ValueError, match="clips have 8 frames; a 15-frame rollout .* needs 16"):
        run(FakeDynamics(), [fake_batch(t=8)])
    with pytest.raises(ValueError, match=r"delta_t must lie in 1..horizon \(3\), got 4"):
        run(FakeDynamics(), horizon=3)
    with pytest.raises(ValueError, match="yielded no clips"):
        run(FakeDynamics(), [])


def test_action_sheet_shows_each_action_repeated(tmp_path: Path) -> None:
    batch = fake_batch(b=2, t=5)
    path = write_action_sheet(
        FakeTokenizer(), FakeDynamics(), FakeLAM(), batch.frames, tmp_path / "sheet.png",
        steps=4, sampling=SamplingConfig(steps=2), usage=[1, 0, 3, 0], kv_cache=False,
    )  # fmt: skip
    cell = SIDE + 4  # a 2-pixel white border around every cell
    sheet = np.asarray(Image.open(path))
    assert sheet.shape == (3 * cell, (1 + NUM_ACTIONS) * cell, 3)  # 2 start frames + usage row
    start = FakeTokenizer().encode(batch.frames[:, :1])[:, 0, 0, 0]  # (B,) level of quadrant 0
    for r in range(2):
        for a in range(NUM_ACTIONS):
            level = (int(start[r]) + 4 * a) % K
            expected = round((level / (K - 1) * 2 - 1 + 1) * 127.5)
            assert sheet[r * cell + 2, (1 + a) * cell + 2, 0] == expected
    bars = sheet[2 * cell + 2 : 3 * cell - 2, cell + 3 :: cell]  # bar middles (rows, actions, 3)
    heights = [(bars[:, a, 1] < 100).sum() for a in range(NUM_ACTIONS)]
    assert heights[2] == SIDE and heights[1] == heights[3] == 0 and 0 < heights[0] < SIDE


def _write_frame_shards(folder: Path, clips: int, t: int) -> None:
    rng = np.random.default_rng(0)
    with wds.TarWriter(str(folder / "test-000000.tar")) as sink:
        for i in range(clips):
            frames = rng.integers(0, 256, (t, 16, 16, 3), dtype=np.uint8)
            sink.write(encode_sample(f"clip{i}", Clip(frames, rng.integers(0, 15, t), {})))


def test_command_with_real_tiny_models(tmp_path: Path) -> None:
    torch.manual_seed(0)
    paths = {}
    for name, model in {
        "tokenizer": VideoTokenizer(tokenizer_preset("tiny")),
        "lam": LatentActionModel(lam_preset("tiny")),
        "dynamics": DynamicsModel(dynamics_preset("tiny")),
    }.items():
        model.save_pretrained(tmp_path / name)
        paths[name] = str(tmp_path / name)
    _write_frame_shards(tmp_path, clips=3, t=5)
    cfg = WorldEvalConfig(horizon=3, delta_t=2, sampling=SamplingConfig(steps=2))
    out = tmp_path / "eval"
    code = eval_world_command(
        paths["tokenizer"], paths["lam"], paths["dynamics"], str(tmp_path / "test-*.tar"),
        out_dir=str(out), batch_size=2, max_batches=1, cfg=cfg, sheet_rows=2, sheet_steps=2,
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["clips"] == 2 and len(report["curves"]["lam_actions"]) == 3
    assert report["dynamics"] == paths["dynamics"] and report["split"] == "test"
    assert Image.open(out / "psnr_vs_horizon.png").size == (720, 420)
    lam_actions = dynamics_preset("tiny").num_latent_actions
    assert Image.open(out / "latent_actions.png").size == ((1 + lam_actions) * 20, 3 * 20)


def test_cached_evaluation_matches_the_reference() -> None:
    torch.manual_seed(0)
    tokenizer = VideoTokenizer(tokenizer_preset("tiny"))
    lam = LatentActionModel(lam_preset("tiny"))
    dynamics = DynamicsModel(dynamics_preset("tiny"))  # window jumps: test_sampling covers them
    for model in (tokenizer, dynamics):
        set_query_by_query(model)
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.uniform(-1, 1, (2, 8, 3, 16, 16)).astype(np.float32))
    actions, mask = torch.zeros(2, 8, dtype=torch.long), torch.ones(2, dtype=torch.bool)
    batch = Batch(frames, actions, mask, ["a", "b"])
    reports = [
        evaluate_world(
            tokenizer,
            dynamics,
            lam,
            [batch],
            WorldEvalConfig(horizon=7, delta_t=2, sampling=SamplingConfig(steps=2), kv_cache=c),
        )  # fmt: skip
        for c in (False, True)
    ]
    uncached, cached = reports[0].curves, reports[1].curves
    assert uncached.keys() == cached.keys()
    for name in uncached:  # pytest.approx compares flat sequences only, not dicts of lists
        assert uncached[name] == pytest.approx(cached[name], abs=1e-4), name
    assert reports[0].next_frame_psnr_db == pytest.approx(reports[1].next_frame_psnr_db, abs=1e-4)
    assert reports[0].delta_t_psnr_db == pytest.approx(reports[1].delta_t_psnr_db, abs=1e-4)
