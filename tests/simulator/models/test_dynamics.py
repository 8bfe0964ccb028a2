"""The MaskGIT dynamics model on the tiny preset: shapes, action alignment, causality, the masked
loss, save/load, input errors, compatibility checks, and a short training run with resume."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds
from accelerate.state import AcceleratorState

import simulator.tasks.dynamics_task as dynamics_task_module
from data_pipeline.action_effects import ActionEffects
from data_pipeline.token_shards import TokenClip, encode_token_sample
from simulator.models.dynamics import ActionInputs, DynamicsModel
from simulator.models.dynamics_config import DynamicsConfig, dynamics_preset
from simulator.tasks.dynamics_task import (
    DynamicsTrainConfig,
    batch_actions,
    dynamics_task,
    one_step_predictions,
)
from tokenizer.config import tokenizer_preset
from tokenizer.model import VideoTokenizer
from worldsim.train import train

B, T, G, CODES, LATENT, DISCRETE, CONT = 2, 6, 4, 125, 4, 15, 3


def tiny_config(**changes: object) -> DynamicsConfig:
    options: dict[str, object] = {
        "action_sources": ["latent", "discrete", "continuous"],
        "continuous_dim": CONT,
    }
    return dynamics_preset("tiny", **(options | changes))


@pytest.fixture
def model() -> DynamicsModel:
    torch.manual_seed(0)
    return DynamicsModel(tiny_config()).eval()


def clip_batch(seed: int = 0, t: int = T) -> tuple[torch.Tensor, ActionInputs]:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, CODES, (B, t, G, G), generator=gen)
    actions = ActionInputs(
        latent=torch.randint(0, LATENT, (B, t - 1), generator=gen),
        discrete=torch.randint(0, DISCRETE, (B, t - 1), generator=gen),
        continuous=torch.randn(B, t - 1, CONT, generator=gen),
    )
    return tokens, actions


def with_action(actions: ActionInputs, source: str, i: int) -> ActionInputs:
    """A copy of `actions` whose action i of `source` is different."""
    a = getattr(actions, source).clone()
    a[:, i] = a[:, i] + 1.0 if source == "continuous" else (a[:, i] + 1) % 2
    return dataclasses.replace(actions, **{source: a})


def test_shapes_and_metrics(model: DynamicsModel) -> None:
    tokens, actions = clip_batch()
    assert model.logits(tokens, None, actions).shape == (B, T, G, G, CODES)
    out = model.train()(tokens, actions)
    assert out.loss.ndim == 0 and out.loss.requires_grad
    assert set(out.metrics) == {"masked_accuracy", "changed_accuracy", "mask_rate", "copy_accuracy"}
    assert 0.4 < float(out.metrics["mask_rate"]) <= 1
    assert model.num_codes == CODES and model.grid == G and model.num_latent_actions == LATENT


@pytest.mark.parametrize("source", ["latent", "discrete", "continuous"])
@pytest.mark.parametrize("i", [0, 2, T - 2])
def test_action_i_conditions_frame_i_plus_1_only(model: DynamicsModel, source: str, i: int) -> None:
    tokens, actions = clip_batch()
    mask = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    before = model.logits(tokens, mask, actions)
    after = model.logits(tokens, mask, with_action(actions, source, i))
    torch.testing.assert_close(before[:, : i + 1], after[:, : i + 1], rtol=0, atol=1e-6)
    assert (before[:, i + 1] - after[:, i + 1]).abs().amax() > 1e-4


def test_frame_logits_ignore_later_frames(model: DynamicsModel) -> None:
    tokens, actions = clip_batch()
    changed = tokens.clone()
    changed[:, 3] = (changed[:, 3] + 1) % CODES
    before, after = model.logits(tokens, None, actions), model.logits(changed, None, actions)
    torch.testing.assert_close(before[:, :3], after[:, :3], rtol=0, atol=1e-6)
    assert (before[:, 3:] - after[:, 3:]).abs().amax() > 1e-4


def test_masked_tokens_are_hidden(model: DynamicsModel) -> None:
    tokens, actions = clip_batch()
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, 2] = True
    changed = tokens.clone()
    changed[:, 2] = (changed[:, 2] + 7) % CODES  # only under the mask: invisible
    torch.testing.assert_close(
        model.logits(tokens, mask, actions), model.logits(changed, mask, actions)
    )


def fixed_mask(tokens: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, 1:, 1:3] = True
    return mask


def test_loss_scores_only_masked_tokens(model: DynamicsModel, monkeypatch) -> None:
    tokens, actions = clip_batch()
    mask = fixed_mask(tokens)
    monkeypatch.setattr(model, "draw_mask", lambda _tokens: mask)
    logits = model.logits(tokens, mask, actions)
    expected = F.cross_entropy(logits[mask], tokens[mask])
    torch.testing.assert_close(model.loss(tokens, actions).loss, expected)
    assert float(model.loss(tokens, actions).metrics["mask_rate"]) == pytest.approx(0.5)


def test_changed_weight_weighs_tokens_that_differ_from_the_previous_frame(monkeypatch) -> None:
    model = DynamicsModel(tiny_config(changed_weight=3.0, corrupt_max=0.0))
    tokens, actions = clip_batch()
    tokens[:, 2] = tokens[:, 1]  # frame 2 repeats frame 1: its tokens are "unchanged"
    mask = fixed_mask(tokens)
    monkeypatch.setattr(model, "draw_mask", lambda _tokens: mask)
    previous = torch.cat([tokens[:, :1], tokens[:, :-1]], dim=1)
    weight = 1.0 + 2.0 * (previous[mask] != tokens[mask]).float()
    assert 0 < int((weight == 1).sum()) < weight.numel()
    logits = model.logits(tokens, mask, actions)
    ce = F.cross_entropy(logits[mask], tokens[mask], reduction="none")
    out = model.loss(tokens, actions)
    torch.testing.assert_close(out.loss, (ce * weight).sum() / weight.sum())
    right = logits[mask].argmax(-1) == tokens[mask]
    changed_accuracy = right[weight > 1].float().mean()
    torch.testing.assert_close(out.metrics["changed_accuracy"], changed_accuracy)
    with pytest.raises(ValueError, match="changed_weight must be > 0"):
        tiny_config(changed_weight=0.0)


def test_action_dropout_hides_single_frames_in_training() -> None:
    tokens, actions = clip_batch()
    model = DynamicsModel(tiny_config(action_dropout=0.5)).eval()
    with torch.no_grad():  # every source's embedding: hidden frames differ clearly
        for embedding in model.action_embeds.values():
            embedding.weight.add_(1.0)
    free = model.embed(tokens, None, actions, drop_last_action=True)
    plain = model.embed(tokens, None, actions)
    assert torch.equal(free[:, :-1], plain[:, :-1]) and not torch.equal(free[:, -1], plain[:, -1])
    torch.manual_seed(0)
    trained = model.train().embed(tokens, None, actions)
    hidden_BT = (trained != plain).any(-1).any(-1)  # frames whose action was dropped
    assert not hidden_BT[:, 0].any()  # frame 0's "no action" embedding is never dropped
    assert hidden_BT.any() and not hidden_BT.all()  # frame by frame, not clip by clip
    with pytest.raises(ValueError, match="action_dropout must be in"):
        tiny_config(action_dropout=1.0)


def test_draw_mask_spares_frame_0_and_respects_the_rate_range() -> None:
    model = DynamicsModel(tiny_config(mask_rate_min=1.0, mask_rate_max=1.0))
    tokens, _ = clip_batch()
    mask = model.draw_mask(tokens)
    assert not mask[:, 0].any() and mask[:, 1:].all()
    model = DynamicsModel(tiny_config(mask_rate_min=0.5, mask_rate_max=0.6))
    rates = (
        model.draw_mask(torch.zeros(64, T, 8, 8, dtype=torch.long))[:, 1:].float().mean((1, 2, 3))
    )
    assert float(rates.min()) > 0.4 and float(rates.max()) < 0.7


def test_corruption_replaces_only_unmasked_tokens_and_only_in_training(monkeypatch) -> None:
    model = DynamicsModel(tiny_config(corrupt_max=0.9))
    tokens = torch.zeros(8, T, G, G, dtype=torch.long)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, 3:] = True
    torch.manual_seed(0)
    corrupted = model.corrupt_context(tokens, mask)
    assert corrupted[:, :3].ne(0).any() and corrupted[:, 3:].eq(0).all()

    tokens, actions = clip_batch()
    mask = fixed_mask(tokens)
    monkeypatch.setattr(model, "draw_mask", lambda _tokens: mask)
    clean = F.cross_entropy(model.logits(tokens, mask, actions)[mask], tokens[mask])
    torch.testing.assert_close(model.eval().loss(tokens, actions).loss, clean)
    assert not torch.allclose(model.train().loss(tokens, actions).loss, clean)


def test_scheduled_sampling_feeds_own_draws_as_context_only_in_training(monkeypatch) -> None:
    model = DynamicsModel(tiny_config(scheduled_sampling=1.0, corrupt_max=0.0))
    tokens, actions = clip_batch()
    loss_mask = fixed_mask(tokens)
    guess_mask = torch.ones_like(loss_mask)
    guess_mask[:, 0] = False  # draw_mask never masks the prompt
    monkeypatch.setattr(model, "draw_mask", lambda _tokens: guess_mask)
    torch.manual_seed(0)
    own = model.own_context(tokens, loss_mask, actions)
    assert torch.equal(own[:, 0], tokens[:, 0])  # the prompt stays real
    assert torch.equal(own[loss_mask], tokens[loss_mask])  # what the loss scores stays real
    assert own[~loss_mask].ne(tokens[~loss_mask]).any()  # the context is the model's own
    model.cfg.scheduled_sampling = 0.0
    assert torch.equal(model.own_context(tokens, loss_mask, actions), tokens)

    model.cfg.scheduled_sampling = 1.0
    masks = iter([loss_mask, guess_mask])  # loss() draws its mask first, then own_context's
    monkeypatch.setattr(model, "draw_mask", lambda _tokens: next(masks))
    clean = F.cross_entropy(model.logits(tokens, loss_mask, actions)[loss_mask], tokens[loss_mask])
    assert not torch.allclose(model.train().loss(tokens, actions).loss, clean)
    monkeypatch.setattr(model, "draw_mask", lambda _tokens: loss_mask)
    torch.testing.assert_close(model.eval().loss(tokens, actions).loss, clean)
    with pytest.raises(ValueError, match="scheduled_sampling must be in"):
        tiny_config(scheduled_sampling=1.5)


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    tokens, actions = clip_batch()
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = DynamicsModel(tiny_config(gradient_checkpointing=checkpointing)).train()
        torch.manual_seed(1)
        model.loss(tokens, actions).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_embed_pieces_match_a_kv_cached_frame_by_frame_pass(model: DynamicsModel) -> None:
    """What the engine will do: frames 0..k-1 through forward_with_kv, then frame k alone."""
    tokens, actions = clip_batch()
    full = model.logits(tokens, None, actions)
    k = 3
    _, past = model.transformer.forward_with_kv(model.embed(tokens[:, :k], None, actions))
    x = model.embed(tokens[:, k : k + 1], None, actions, start_frame=k)
    out, _ = model.transformer.forward_with_kv(x, past)
    torch.testing.assert_close(model.head(out)[:, 0], full[:, k].flatten(1, 2), atol=1e-5, rtol=0)


def test_one_step_predictions_match_frame_by_frame_argmax(model: DynamicsModel) -> None:
    tokens, actions = clip_batch()
    pred = one_step_predictions(model, tokens[1], actions, clip=1)
    assert torch.equal(pred[0], tokens[1, 0])
    for t in range(1, T):
        mask = torch.zeros_like(tokens[:, : t + 1], dtype=torch.bool)
        mask[:, t] = True
        expected = model.logits(tokens[:, : t + 1], mask, actions).argmax(-1)[1, t]
        assert torch.equal(pred[t], expected)


def test_save_load_round_trip(model: DynamicsModel, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path)
    loaded = DynamicsModel.from_pretrained(tmp_path).eval()
    assert loaded.cfg == model.cfg
    tokens, actions = clip_batch()
    assert torch.equal(model.logits(tokens, None, actions), loaded.logits(tokens, None, actions))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t, a: (t + CODES, a), r"token ids must lie in \[0, 125\)"),
        (lambda t, a: (t - 1 - t.max(), a), r"token ids must lie"),
        (lambda t, a: (t.float(), a), "integer tensor"),
        (lambda t, a: (t[:, :, :3], a), r"grid 4"),
        (lambda t, a: (t.repeat(1, 2, 1, 1), a), "max_frames=8"),
        (lambda t, a: (t, dataclasses.replace(a, latent=None)), "'latent' actions"),
        (lambda t, a: (t, dataclasses.replace(a, discrete=a.discrete + DISCRETE)), r"\[0, 15\)"),
        (lambda t, a: (t, dataclasses.replace(a, latent=a.latent[:, :2])), "A >= 5"),
        (lambda t, a: (t, dataclasses.replace(a, continuous=a.continuous[..., :2])), "width 2"),
        (lambda t, a: (t, dataclasses.replace(a, discrete=a.discrete.float())), "integer ids"),
        (lambda t, a: (t[:, :1], a), ">= 2 frames"),
    ],
)
def test_bad_inputs_are_named(model: DynamicsModel, change, message: str) -> None:
    tokens, actions = clip_batch()
    with pytest.raises(ValueError, match=message):
        model.loss(*change(tokens, actions))


def test_bad_configs_are_named() -> None:
    with pytest.raises(ValueError, match="unknown action_sources"):
        tiny_config(action_sources=["joystick"])
    with pytest.raises(ValueError, match="continuous_dim"):
        dynamics_preset("tiny", action_sources=["continuous"])
    with pytest.raises(ValueError, match="num_heads"):
        tiny_config(width=33)
    with pytest.raises(ValueError, match="corrupt_max"):
        tiny_config(corrupt_max=1.5)
    with pytest.raises(ValueError, match="mask_rate"):
        tiny_config(mask_rate_min=0.9, mask_rate_max=0.5)
    with pytest.raises(ValueError, match="unknown dynamics preset"):
        dynamics_preset("huge")
    large = dynamics_preset("large")
    assert (large.depth, large.width) == (12, 512)


def test_check_compatible_names_both_values(model: DynamicsModel) -> None:
    tokenizer = VideoTokenizer(tokenizer_preset("tiny"))  # 125 codes on a 4x4 grid
    model.check_compatible(tokenizer=tokenizer, lam=SimpleNamespace(num_actions=LATENT))
    other = VideoTokenizer(tokenizer_preset("tiny", image_size=32))
    with pytest.raises(ValueError, match="tokenizer grid is 8 but dynamics grid is 4"):
        model.check_compatible(tokenizer=other)
    with pytest.raises(ValueError, match="tokenizer has 64 codes but dynamics num_codes is 125"):
        model.check_compatible(tokenizer=SimpleNamespace(num_codes=64, cfg=SimpleNamespace(grid=4)))
    with pytest.raises(ValueError, match="has 8 actions but dynamics num_latent_actions is 4"):
        model.check_compatible(lam=SimpleNamespace(num_actions=8))


# --- training through the shared driver, on token shards written here ---------------------------


def write_token_shards(folder: Path, num_codes: int = CODES, shards: int = 2) -> Path:
    """Token shards of 8-frame 4x4 clips: a token pattern shifted by the clip's actions."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ident = {
        "tokenizer": {"num_codes": num_codes, "grid": G, "checkpoint_sha256": "tok", "path": ""},
        "lam": {"num_actions": LATENT, "checkpoint_sha256": "lam"},
    }
    for s in range(shards):
        with wds.TarWriter(str(folder / f"train-{s:06d}.tar")) as sink:
            for c in range(8):
                actions = rng.integers(0, LATENT, 8)
                start = rng.integers(0, num_codes, (G, G))
                tokens = np.stack([(start + k) % num_codes for k in np.cumsum(actions) - actions])
                clip = TokenClip(
                    tokens.astype(np.uint16), actions.astype(np.int64),
                    actions[:-1].astype(np.uint8), {"source": "test", **ident},
                )  # fmt: skip
                sink.write(encode_token_sample(f"clip-{s}-{c:06d}", clip))
    return folder


@pytest.fixture(autouse=True)
def fresh_accelerate_state() -> Iterator[None]:
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def run_tiny(shards: Path, run: Path, steps: int) -> None:
    task, cfg = dynamics_task(
        "tiny",
        [f"data.shards={shards}", f"eval_shards={shards}", "eval_split=train",
         f"train.out_dir={run}", f"train.steps={steps}", "train.checkpoint_every=4",
         "train.eval_every=8", "model.action_sources=[latent, discrete]"],
    )  # fmt: skip
    train(task, cfg)


def test_train_resume_load(tmp_path: Path) -> None:
    shards, run = write_token_shards(tmp_path / "tokens"), tmp_path / "run"
    run_tiny(shards, run, steps=8)
    assert (run / "checkpoints" / "step-00000008").is_dir()
    run_tiny(shards, run, steps=12)  # resumes at step 8, not from scratch
    with open(run / "train.csv") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == [5, 10]
    with open(run / "eval.csv") as f:
        assert "masked_accuracy" in next(csv.DictReader(f))
    assert (run / "visuals" / "step-00000012_tokens.png").is_file()
    model = DynamicsModel.from_pretrained(run / "final")
    assert json.loads((run / "final" / "config.json").read_text())["cfg"]["grid"] == G
    assert model.cfg.action_sources == ["latent", "discrete"]


def test_shards_of_another_tokenizer_are_refused(tmp_path: Path) -> None:
    shards = write_token_shards(tmp_path / "tokens", num_codes=64, shards=1)
    task, _ = dynamics_task("tiny", [f"data.shards={shards}"])
    with pytest.raises(ValueError, match="tokenizer has 64 codes but the model's num_codes is 125"):
        task.train_batches(2, 0, 1, 0)


def test_model_overrides_reach_the_model() -> None:
    cfg = DynamicsTrainConfig(preset="tiny", model={"width": 48, "action_sources": ["discrete"]})
    assert cfg.model_config().width == 48 and cfg.model_config().action_sources == ["discrete"]
    with pytest.raises(ValueError, match="num_heads"):
        DynamicsTrainConfig(preset="tiny", model={"width": 33}).model_config()


def test_source_dropout_lets_a_source_be_left_out() -> None:
    tokens, actions = clip_batch()
    latent_only = dataclasses.replace(actions, discrete=None, continuous=None)
    torch.manual_seed(0)
    strict = DynamicsModel(tiny_config()).eval()
    with pytest.raises(ValueError, match="discrete.*source_dropout=0"):
        strict.logits(tokens, None, latent_only)
    torch.manual_seed(0)
    separable = DynamicsModel(tiny_config(source_dropout=0.5)).eval()
    out = separable.logits(tokens, None, latent_only)
    assert not torch.allclose(out, separable.logits(tokens, None, actions))
    # In training a dropped source adds nothing: with a dropout near 1 every clip trains as if
    # given no actions at all, i.e. on the frame-0 and zero action embeddings only.
    torch.manual_seed(1)
    nearly_all = DynamicsModel(tiny_config(source_dropout=0.999)).train()
    none = ActionInputs()
    assert torch.equal(
        nearly_all.embed(tokens, None, actions), nearly_all.embed(tokens, None, none)
    )
    with pytest.raises(ValueError, match="source_dropout must be in"):
        tiny_config(source_dropout=1.0)


def test_effect_classes_become_the_discrete_actions(monkeypatch, tmp_path: Path) -> None:
    """With `effects_game`, the model's discrete actions are the measured effect classes and
    the shards' game ids reach it mapped to them."""
    effects = ActionEffects("procgen:coinrun", [[0, 3], [1, 2]], ["NOOP", "LEFT"], 1, 1)
    monkeypatch.setattr(dynamics_task_module, "measure_action_effects", lambda *a, **k: effects)
    cfg = DynamicsTrainConfig(preset="tiny", effects_game="procgen:coinrun",
                              model={"action_sources": ["discrete"]})  # fmt: skip
    model_cfg = cfg.model_config()
    assert model_cfg.num_discrete_actions == 2 and model_cfg.action_names == ["NOOP", "LEFT"]
    batch = SimpleNamespace(
        actions=torch.tensor([[0, 1, 2, 3]]), action_mask=torch.tensor([True]), keys=["k"]
    )
    assert batch_actions(batch, model_cfg).discrete.tolist() == [[0, 1, 1, 0]]
    with pytest.raises(ValueError, match="action_groups has 2 groups for 3 discrete actions"):
        dynamics_preset("tiny", num_discrete_actions=3, action_groups=[[0], [1]])


def test_code_levels_embed_each_token_from_the_tokenizers_fsq_digits() -> None:
    from tokenizer.quantizers import FSQ

    model = DynamicsModel(tiny_config(code_levels=[5, 5, 5], action_sources=["latent"]))
    ids = torch.arange(125)
    assert model.code_embed is not None
    torch.testing.assert_close(model.code_digits[:125], FSQ([5, 5, 5]).embed(ids))
    assert not model.code_digits[125].any()  # the mask id carries no digits
    tokens = torch.randint(0, 125, (2, 3, 4, 4))
    still = ActionInputs(latent=torch.zeros(2, 2, dtype=torch.long))
    with_digits = model.embed(tokens, None, still)
    with torch.no_grad():
        model.code_embed.weight.zero_()
    plain = model.embed(tokens, None, still)
    assert not torch.allclose(with_digits, plain)  # the digits reach the input
    with pytest.raises(ValueError, match=r"code_levels \[5, 5\] give 25 codes, not num_codes=125"):
        tiny_config(code_levels=[5, 5]).validate()
