"""The evaluation suite, through the engine, on a fake world where the answers are known.

The fake world: a frame is a 2x2 grid of flat quadrants, each at one of K brightness levels
(plus a little noise); the fake tokenizer reads the levels as tokens. Each step, every level
moves by the clip's action a_t (mod K). The fake LAM reads a_t back from the pixels, and the fake
dynamics applies the action it is given, so with LAM-inferred (or true) actions a rollout must
reproduce the real tokens exactly and score the tokenizer's own PSNR. A fake IDM reads the move
back, so a perfect world is fully controllable.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds
from einops import rearrange, repeat
from PIL import Image
from torch import Tensor, nn

from commands.main import main
from data_pipeline.loader import Batch
from data_pipeline.schema import Clip, encode_sample
from simulator.engine.sampling_config import SamplingConfig
from simulator.engine.state import EngineConfig
from simulator.engine.world_simulator import WorldSimulator
from simulator.evaluation.figures import write_action_sheet
from simulator.evaluation.world import WorldEvalConfig, evaluate_world
from simulator.evaluation.world_report import WorldReport, write_world_outputs
from simulator.models.dynamics import ActionInputs, DynamicsModel
from simulator.models.dynamics_config import DynamicsConfig, dynamics_preset
from simulator.models.lam import LatentActionModel
from simulator.models.lam_config import lam_preset
from simulator.world.checkpoint import save_world
from simulator.world.spec import WorldActionSpace, WorldSpec
from tests.simulator.evaluation.test_fvd import StandIn
from tokenizer.config import tokenizer_preset
from tokenizer.model import VideoTokenizer

K, GRID, SIDE, NUM_ACTIONS = 11, 2, 12, 4  # levels (= codes), tokens per side, pixels, actions


class FakeTokenizer(nn.Module):
    num_codes = K
    cfg = SimpleNamespace(image_size=SIDE, max_frames=16, grid=GRID)

    def encode(self, frames_BTCHW: Tensor, actions=None) -> Tensor:
        quadrants = F.avg_pool2d(rearrange(frames_BTCHW, "b t c h w -> (b t) c h w"), SIDE // 2)
        levels = ((quadrants.mean(dim=1) + 1) / 2 * (K - 1)).round().long()
        return rearrange(levels, "(b t) h w -> b t h w", b=frames_BTCHW.shape[0])

    def decode(self, tokens_BThw: Tensor) -> Tensor:
        pixels = tokens_BThw.float() / (K - 1) * 2 - 1
        up = repeat(pixels, "b t h w -> b t c (h p) (w q)", c=3, p=SIDE // 2, q=SIDE // 2)
        return up.contiguous()

    def start(
        self, frames_BTCHW, hop=None, cached=True, actions=None
    ) -> tuple[Tensor, Tensor, None]:
        tokens = self.encode(frames_BTCHW)
        return tokens, self.decode(tokens), None  # frames decode independently: no state

    def reconstruct(self, frames_BTCHW: Tensor, tokens_BThw=None, actions=None) -> Tensor:
        return self.decode(self.encode(frames_BTCHW) if tokens_BThw is None else tokens_BThw)

    def decode_step(
        self, tokens_Bhw, state: None, observed=None, action=None
    ) -> tuple[Tensor, None]:
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
            num_discrete_actions=NUM_ACTIONS, continuous_dim=1,
        )  # fmt: skip
        self.source, self.noisy = source, noisy
        self.grid, self.num_codes = GRID, K

    def embed(
        self, tokens_BThw: Tensor, mask: Tensor, actions: ActionInputs, drop_last_action=False
    ) -> Tensor:
        a_BA = getattr(actions, self.source)
        if self.source == "continuous":  # one control: its rounded value is the level step
            a_BA = a_BA[..., 0].round().long()
        target = (tokens_BThw[:, :-1] + a_BA[:, : tokens_BThw.shape[1] - 1, None, None]) % K
        logits = 50.0 * F.one_hot(target, K).float() * (not self.noisy)
        logits = torch.cat([torch.zeros_like(logits[:, :1]), logits], dim=1)
        return rearrange(logits, "b t h w v -> b t (h w) v")

    def transform(self, x: Tensor) -> Tensor:
        return x

    def check_compatible(self, tokenizer=None, lam=None) -> None:
        return None

    def head(self, x: Tensor) -> Tensor:
        return x


class FakeIDM(nn.Module):
    """Reads the action from the level change of quadrant 0: exact on the fake world's frames."""

    cfg = SimpleNamespace(
        num_classes=NUM_ACTIONS, group_names=["a0", "a1", "a2", "a3"], continuous_dim=0
    )

    def classes(self, actions: Tensor) -> Tensor:
        return actions

    def predict(self, prev_BCHW: Tensor, next_BCHW: Tensor) -> Tensor:
        levels = FakeTokenizer().encode(torch.stack([prev_BCHW, next_BCHW], 1))[:, :, 0, 0]
        return 10.0 * F.one_hot((levels[:, 1] - levels[:, 0]) % K, K)[:, :NUM_ACTIONS].float()


class FakeRegressionIDM(nn.Module):
    """Reads the one control back from the level change of quadrant 0, as a number."""

    cfg = SimpleNamespace(continuous_dim=1, control_names=["steer"])

    def predict(self, prev_BCHW: Tensor, next_BCHW: Tensor) -> Tensor:
        levels = FakeTokenizer().encode(torch.stack([prev_BCHW, next_BCHW], 1))[:, :, 0, 0]
        return ((levels[:, 1] - levels[:, 0]) % K).float()[:, None]


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


def run(dynamics: FakeDynamics, batches: list[Batch] | None = None, idm=None, **cfg) -> WorldReport:
    cfg.setdefault("sampling", SamplingConfig(steps=2))
    cfg.setdefault("kv_cache", False)  # the fakes compute logits without a transformer
    loader = batches if batches is not None else [fake_batch(seed=0), fake_batch(seed=1)]
    evaluation = evaluate_world(
        FakeTokenizer(), dynamics, FakeLAM(), loader, WorldEvalConfig(**cfg), idm
    )
    return evaluation.report


def test_perfect_latent_dynamics_scores_the_tokenizer_ceiling() -> None:
    report = run(FakeDynamics("latent"), horizon=8)
    assert set(report.psnr) == {
        "tokenizer",
        "copy_first_frame",
        "lam_actions",
        "random_latent_actions",
    }
    assert all(len(c) == 8 for c in report.psnr.values()) and report.clips == 6
    ceiling = report.psnr["tokenizer"]
    assert report.psnr["lam_actions"] == pytest.approx(ceiling, abs=1e-9)
    assert report.ssim["lam_actions"] == pytest.approx(report.ssim["tokenizer"], abs=1e-9)
    nf = report.next_frame  # teacher forcing: every frame from the real past, exactly
    assert nf["psnr"] == pytest.approx(sum(ceiling) / 8, abs=1e-6) and nf["psnr"] > 35
    assert nf["copy_psnr"] < 25 and nf["pooled_psnr"] > nf["copy_pooled_psnr"] + 10
    assert sum(report.psnr["random_latent_actions"][2:]) / 6 < sum(ceiling) / 8 - 10
    expected = report.psnr["lam_actions"][3] - report.psnr["random_latent_actions"][3]
    assert report.delta_t_psnr == {"latent": pytest.approx(expected, abs=1e-4)} and expected > 10
    assert sum(report.latent_action_counts) == 6 * 8 and len(report.latent_action_counts) == 4
    # The fake LAM reads the true actions exactly, so it carries all of their information.
    assert report.true_action_entropy_bits is None  # a latent-only model: no true stream
    assert report.warnings() == {} and report.controllability is None and report.fvd is None


def test_true_action_dynamics_gets_true_and_random_curves() -> None:
    report = run(FakeDynamics("discrete"), horizon=6)
    assert set(report.psnr) == {
        "tokenizer",
        "copy_first_frame",
        "true_actions",
        "random_true_actions",
    }
    assert report.psnr["true_actions"] == pytest.approx(report.psnr["tokenizer"], abs=1e-9)
    assert set(report.delta_t_psnr) == {"true"} and report.delta_t_psnr["true"] > 10
    with pytest.raises(ValueError, match="holds 2 clips without actions"):
        run(FakeDynamics("discrete"), [fake_batch(b=2, with_actions=False)], horizon=6)


def test_shuffled_actions_raise_the_loss_only_of_a_model_that_reads_them() -> None:
    steered = run(FakeDynamics("discrete"), horizon=6).action_shuffle
    assert steered is not None and steered["loss_own_changed"] < 0.1
    assert steered["rise_changed"] > 1.0 and steered["rise_all"] > 0.1
    blind = run(FakeDynamics("discrete", noisy=True), horizon=6).action_shuffle
    assert blind is not None and blind["rise_changed"] == pytest.approx(0.0, abs=1e-6)


class SeparableFakeDynamics(FakeDynamics):
    """A fake trained with source dropout on latent and true actions: it must be steered by one
    source at a time."""

    def __init__(self, noisy: bool = False) -> None:
        super().__init__("latent", noisy=noisy)
        self.cfg.action_sources, self.cfg.source_dropout = ["latent", "discrete"], 0.5

    def embed(
        self, tokens_BThw: Tensor, mask: Tensor, actions: ActionInputs, drop_last_action=False
    ) -> Tensor:
        given = [s for s in ("latent", "discrete") if getattr(actions, s) is not None]
        assert len(given) == 1, given
        self.source = given[0]
        return super().embed(tokens_BThw, mask, actions)


def test_continuous_controls_get_true_and_shuffled_curves_and_r2() -> None:
    def controls(seed: int) -> Batch:
        batch = fake_batch(b=4, seed=seed)  # integer steps, given as one float control each
        return Batch(batch.frames, batch.actions.float()[..., None], batch.action_mask, batch.keys)

    report = run(FakeDynamics("continuous"), [controls(0), controls(1)], FakeRegressionIDM(),
                 horizon=6)  # fmt: skip
    assert report.psnr["true_actions"] == pytest.approx(report.psnr["tokenizer"], abs=1e-9)
    assert report.delta_t_psnr["true"] > 10  # another clip's controls lead elsewhere
    control = report.controllability
    assert control is not None
    assert control["generated"]["r2"]["steer"] == pytest.approx(1.0)
    assert control["real"]["r2"]["steer"] == pytest.approx(1.0)
    assert control["floor"]["mean_r2"] < 0.5
    # per rollout step, and one step from the real past: a perfect world loses nothing on either
    assert control["generated"]["by_step"]["steer"] == pytest.approx([1.0] * 6)
    assert control["one_step"]["r2"]["steer"] == pytest.approx(1.0)
    assert "steer by rollout step: t1 1.00, t2 1.00, t4 1.00, t6 1.00" in report.render()
    with pytest.raises(ValueError, match="holds 0 clips without actions, or discrete ones"):
        run(FakeDynamics("continuous"), [fake_batch(b=2)], horizon=6)


def test_separable_dynamics_gets_every_stream_and_is_controllable() -> None:
    report = run(SeparableFakeDynamics(), horizon=6, idm=FakeIDM())
    assert set(report.psnr) == {
        "tokenizer", "copy_first_frame", "lam_actions", "random_latent_actions", "true_actions",
        "random_true_actions",
    }  # fmt: skip
    for steered in ("lam_actions", "true_actions"):
        assert report.psnr[steered] == pytest.approx(report.psnr["tokenizer"], abs=1e-9)
    assert set(report.delta_t_psnr) == {"latent", "true"}
    assert min(report.delta_t_psnr.values()) > 10
    assert report.latent_true_mutual_info_bits == pytest.approx(report.true_action_entropy_bits)
    control = report.controllability
    assert control["generated"]["accuracy"] == control["real"]["accuracy"] == 1.0
    assert control["generated"]["transitions"] == 6 * 6 and report.controllability_share() == 1.0
    assert control["floor"]["accuracy"] < 0.6
    assert control["generated"]["by_step"] == [1.0] * 6 and control["one_step"]["accuracy"] == 1.0
    blind = run(SeparableFakeDynamics(noisy=True), horizon=6, idm=FakeIDM())
    blind_control = blind.controllability
    assert blind_control["generated"]["accuracy"] < 0.6  # a world that ignores the keys
    assert (
        blind_control["one_step"]["accuracy"] < 0.6
        and len(blind_control["generated"]["by_step"]) == 6
    )
    assert "of the ceiling" in blind.render()


def test_next_frame_error_is_split_between_motion_and_stillness() -> None:
    batches = [fake_batch(seed=0), fake_batch(seed=1)]
    moved = torch.cat([b.actions[:, :6] for b in batches]) != 0  # every token moves by a_t
    perfect = run(FakeDynamics("discrete"), batches, horizon=6).next_frame
    assert perfect["changed_token_share"] == pytest.approx(float(moved.float().mean()))
    assert perfect["changed_token_accuracy"] == perfect["still_token_accuracy"] == 1.0
    for split in ("pooled_psnr_still_kept", "pooled_psnr_motion_given"):
        assert perfect[split] == pytest.approx(perfect["pooled_psnr"], abs=1e-6)
    blind = run(FakeDynamics("discrete", noisy=True), batches, horizon=6)
    nf = blind.next_frame
    assert nf["changed_token_accuracy"] < 0.4 and nf["still_token_accuracy"] < 0.4
    # Most tokens move, so giving the moving ones back repairs more than the still ones.
    assert nf["pooled_psnr_motion_given"] > nf["pooled_psnr_still_kept"] > nf["pooled_psnr"]
    assert "next frame's error by source" in blind.render()


def test_context_slides_past_max_frames() -> None:
    report = run(FakeDynamics("latent", max_frames=4), horizon=9)
    assert report.psnr["lam_actions"] == pytest.approx(report.psnr["tokenizer"], abs=1e-9)
    assert report.next_frame["psnr"] == pytest.approx(sum(report.psnr["tokenizer"]) / 9, abs=1e-6)


def test_deterministic_for_a_seed_and_varies_with_it() -> None:
    noisy = FakeDynamics("latent", noisy=True)
    first, again = run(noisy, seed=3, horizon=5), run(noisy, seed=3, horizon=5)
    assert first == again
    assert run(noisy, seed=4, horizon=5).psnr != first.psnr
    assert "WARNING: lam_actions loses to copying the prompt frame" in first.render()


def test_fvd_of_the_rollouts_is_reported_with_its_protocol() -> None:
    cfg = WorldEvalConfig(horizon=9, sampling=SamplingConfig(steps=2), kv_cache=False, fvd_clips=4)
    batches = [fake_batch(seed=0), fake_batch(seed=1)]
    report = evaluate_world(
        FakeTokenizer(), FakeDynamics("latent"), FakeLAM(), batches, cfg, i3d=StandIn()
    ).report
    assert report.fvd["clips"] == 4 and report.fvd["frames"] == 10
    assert "small: 4 clips" in report.fvd["protocol"] and report.fvd["fvd"] >= 0


def test_report_round_trip_render_and_files(tmp_path: Path) -> None:
    evaluation = evaluate_world(
        FakeTokenizer(), SeparableFakeDynamics(), FakeLAM(), [fake_batch(seed=0)],
        WorldEvalConfig(horizon=5, sampling=SamplingConfig(steps=2), kv_cache=False), FakeIDM(),
    )  # fmt: skip
    report = evaluation.report
    assert WorldReport.from_json(report.to_json()) == report
    with pytest.raises(ValueError, match="not a world-model report"):
        WorldReport.from_json(json.dumps({"clips": 3}))
    text = report.render()
    for part in ("ΔtPSNR (t=4, latent", "next frame (teacher-forced)", "controllability"):
        assert part in text
    files = write_world_outputs(report, evaluation.samples, tmp_path)
    assert Image.open(files["psnr"]).size == (720, 420) and files["ssim"].is_file()
    with av.open(str(files["video"])) as video:
        stream = video.streams.video[0]
        # 3 clips x 5 videos under a 10-pixel row of labels, enlarged 3 times
        assert (stream.height, stream.width) == (3 * (10 + 3 * SIDE), 3 * 5 * SIDE)
    assert json.loads(files["report"].read_text())["clips"] == 3 and not list(
        tmp_path.glob("*.tmp")
    )


def test_bad_inputs_name_the_lengths() -> None:
    with pytest.raises(ValueError, match="clips have 8 frames; a 15-frame rollout .* needs 16"):
        run(FakeDynamics(), [fake_batch(t=8)])
    with pytest.raises(ValueError, match=r"delta_t must lie in 1..horizon \(3\), got 4"):
        run(FakeDynamics(), horizon=3)
    with pytest.raises(ValueError, match="yielded no clips"):
        run(FakeDynamics(), [])
    with pytest.raises(ValueError, match="FVD needs clips of >= 9 frames"):
        run(FakeDynamics(), horizon=5, fvd_clips=8)


def test_action_sheet_shows_each_action_repeated(tmp_path: Path) -> None:
    batch = fake_batch(b=2, t=5)
    spec = WorldSpec(WorldActionSpace("latent", NUM_ACTIONS), SamplingConfig(steps=2))
    engine = WorldSimulator(
        FakeTokenizer(), FakeDynamics(), spec, EngineConfig(kv_cache=False), FakeLAM()
    )
    path = write_action_sheet(engine, batch.frames, tmp_path / "sheet.png", usage=[1, 0, 3, 0])
    cell = SIDE + 4  # a 2-pixel white border around every cell
    sheet = np.asarray(Image.open(path))
    assert sheet.shape == (3 * cell, (1 + NUM_ACTIONS) * cell, 3)  # 2 start frames + usage row
    start = FakeTokenizer().encode(batch.frames[:, :1])[:, 0, 0, 0]  # (B,) level of quadrant 0
    for r in range(2):
        for a in range(NUM_ACTIONS):
            level = (int(start[r]) + 4 * a) % K
            expected = round((level / (K - 1) * 2 - 1 + 1) * 127.5)
            assert sheet[r * cell + 2, (1 + a) * cell + 2, 0] == expected
    bars = sheet[2 * cell + 2 : 3 * cell - 2, cell + 2 + SIDE // 2 :: cell]  # bar middles
    heights = [(bars[:, a, 1] < 100).sum() for a in range(NUM_ACTIONS)]
    assert heights[2] == SIDE and heights[1] == heights[3] == 0 and 0 < heights[0] < SIDE


def _write_frame_shards(folder: Path, clips: int, t: int) -> None:
    rng = np.random.default_rng(0)
    with wds.TarWriter(str(folder / "test-000000.tar")) as sink:
        for i in range(clips):
            frames = rng.integers(0, 256, (t, 16, 16, 3), dtype=np.uint8)
            sink.write(encode_sample(f"clip{i}", Clip(frames, rng.integers(0, 15, t), {})))


def tiny_world(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_world(
        tmp_path / "world", VideoTokenizer(tokenizer_preset("tiny")),
        DynamicsModel(dynamics_preset("tiny")), LatentActionModel(lam_preset("tiny")),
    )  # fmt: skip


def test_command_with_real_tiny_models(tmp_path: Path, capsys) -> None:
    world = tiny_world(tmp_path)
    _write_frame_shards(tmp_path, clips=3, t=5)
    out = tmp_path / "eval"
    assert main(["eval", "world", "--world", str(world), "--shards", str(tmp_path / "test-*.tar"),
                 "--out", str(out), "--batch-size", "2", "--max-batches", "1", "--horizon", "3",
                 "--delta-t", "2", "--steps", "2"]) == 0  # fmt: skip
    assert "ΔtPSNR (t=2, latent actions" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["clips"] == 2 and len(report["psnr"]["lam_actions"]) == 3
    assert report["dynamics"] == str(world) and report["split"] == "test"
    assert Image.open(out / "psnr_vs_horizon.png").size == (720, 420)
    lam_actions = dynamics_preset("tiny").num_latent_actions
    sheet = Image.open(out / "latent_actions.png").size  # 3 clips (of 4 asked for) + usage row
    assert sheet == ((1 + lam_actions) * 20, 4 * 20)
    assert (out / "rollouts.mp4").stat().st_size > 0


def test_cached_evaluation_matches_the_reference(tmp_path: Path) -> None:
    world = tiny_world(tmp_path)  # window jumps: test_engine covers them
    from simulator.world.checkpoint import load_world

    parts = load_world(world)
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.uniform(-1, 1, (2, 8, 3, 16, 16)).astype(np.float32))
    batch = Batch(
        frames, torch.zeros(2, 8, dtype=torch.long), torch.ones(2, dtype=torch.bool), ["a", "b"]
    )
    reports = [
        evaluate_world(
            parts.tokenizer, parts.dynamics, parts.lam, [batch],
            WorldEvalConfig(horizon=7, delta_t=2, sampling=SamplingConfig(steps=2), kv_cache=c),
        ).report
        for c in (False, True)
    ]  # fmt: skip
    uncached, cached = reports[0].psnr, reports[1].psnr
    assert uncached.keys() == cached.keys()
    for name in uncached:  # pytest.approx compares flat sequences only, not dicts of lists
        assert uncached[name] == pytest.approx(cached[name], abs=1e-4), name
    assert reports[0].next_frame["psnr"] == pytest.approx(reports[1].next_frame["psnr"], abs=1e-4)


def test_a_world_steered_by_effect_classes_gets_the_clips_game_ids_mapped() -> None:
    """Clips hold game ids 0..7 whose effects are id % 4; a dynamics trained on the 4 effect
    classes is steered by them, and the evaluation maps the clips' ids onto them."""
    dynamics = FakeDynamics("discrete")
    dynamics.cfg.action_groups = [[0, 4], [1, 5], [2, 6], [3, 7]]
    batches = []
    for seed in (0, 1):
        batch = fake_batch(seed=seed)  # actions are effects 0..3
        twins = torch.randint(2, batch.actions.shape, generator=torch.Generator().manual_seed(seed))
        batches.append(dataclasses.replace(batch, actions=batch.actions + 4 * twins))
    assert int(batches[0].actions.max()) >= 4
    report = run(dynamics, batches, horizon=6)
    assert report.psnr["true_actions"] == pytest.approx(report.psnr["tokenizer"], abs=1e-9)
    assert report.delta_t_psnr["true"] > 10
