"""FSQ and VQ invariants: code ranges, index <-> code bijection, usage statistics, restarts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tokenizer.config import QuantizerConfig
from tokenizer.quantizers import FSQ, VectorQuantizer, build_quantizer, code_statistics


def test_code_statistics() -> None:
    usage, perplexity = code_statistics(torch.tensor([0, 0, 1, 1]), num_codes=4)
    assert usage.item() == pytest.approx(0.5)
    assert perplexity.item() == pytest.approx(2.0)
    usage, perplexity = code_statistics(torch.arange(8), num_codes=8)
    assert (usage.item(), perplexity.item()) == (pytest.approx(1.0), pytest.approx(8.0))


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [3, 4], [2, 2, 2]])
def test_fsq_indices_and_codes_are_a_bijection(levels: list[int]) -> None:
    fsq = FSQ(levels)
    assert fsq.num_codes == math.prod(levels) and fsq.dim == len(levels)
    every = torch.arange(fsq.num_codes)
    codes = fsq.embed(every)
    assert codes.shape == (fsq.num_codes, len(levels))
    assert torch.equal(fsq.codes_to_indices(codes), every)
    assert len({tuple(c) for c in codes.tolist()}) == fsq.num_codes  # all codes distinct


def test_fsq_quantize_range_and_consistency() -> None:
    torch.manual_seed(0)
    fsq = FSQ([8, 5, 5, 5])
    z = (3 * torch.randn(4096, 4)).requires_grad_()
    out = fsq(z)
    assert out.indices.dtype == torch.int64 and out.indices.shape == (4096,)
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < 1000
    assert out.quantized.abs().max() <= 1.0
    # Each dimension takes exactly `level` distinct values on a wide input.
    for dim, level in enumerate([8, 5, 5, 5]):
        assert out.quantized[:, dim].unique().numel() == level
    torch.testing.assert_close(fsq.embed(out.indices), out.quantized.detach())
    assert torch.equal(fsq.tokenize(z), out.indices)
    assert out.loss.item() == 0.0
    assert 0 < out.usage.item() <= 1 and 1 <= out.perplexity.item() <= 1000
    out.quantized.sum().backward()  # straight-through: the rounding passes gradients
    assert z.grad is not None and z.grad.abs().sum() > 0


def _vq(update: str = "ema") -> VectorQuantizer:
    torch.manual_seed(0)
    return VectorQuantizer(32, 8, update=update, dead_after=2, restart_noise=0.01)


def test_vq_lookup_is_cosine_nearest_and_consistent() -> None:
    vq = _vq().eval()
    z = torch.randn(64, 8)
    out = vq(z)
    codes = F.normalize(vq.codebook, dim=-1)
    expected = (F.normalize(z, dim=-1) @ codes.T).argmax(dim=-1)
    assert torch.equal(out.indices, expected)
    assert torch.equal(vq.tokenize(z), out.indices)
    torch.testing.assert_close(out.quantized, vq.embed(out.indices))
    torch.testing.assert_close(out.quantized.norm(dim=-1), torch.ones(64))
    usage, perplexity = code_statistics(out.indices, 32)
    assert (out.usage, out.perplexity) == (usage, perplexity)


def test_vq_eval_changes_no_state() -> None:
    vq = _vq().eval()
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    vq(torch.randn(64, 8))
    for key, value in vq.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_vq_first_training_batch_initialises_codes_from_inputs() -> None:
    vq = _vq().train()
    z = torch.randn(16, 8)
    vq(z)
    assert bool(vq.initialised)
    # Every code is within the restart noise of some input direction.
    sims = F.normalize(vq.codebook, dim=-1) @ F.normalize(z, dim=-1).T
    assert sims.max(dim=1).values.min() > 0.99


def test_vq_dead_code_restart_revives_unused_codes() -> None:
    vq = _vq().train()
    vq.initialised.fill_(True)  # skip the batch init: start fully collapsed instead
    with torch.no_grad():
        vq.codebook.copy_(F.normalize(torch.ones(32, 8), dim=-1))
        vq.ema_sum.copy_(vq.codebook)
    z = torch.randn(256, 8)
    first = vq(z)
    assert first.usage.item() == pytest.approx(1 / 32)  # identical codes: argmax takes code 0
    vq(z)  # second idle step: the 31 unused codes reach dead_after = 2 and restart
    assert vq.idle_steps.max() == 0
    after = vq(z)
    assert after.usage.item() > 0.5
    assert after.perplexity.item() > 10 * first.perplexity.item()


def test_vq_restarts_land_on_the_worst_served_inputs() -> None:
    vq = _vq().train()
    vq.initialised.fill_(True)
    served = F.normalize(torch.ones(8), dim=0)
    with torch.no_grad():
        vq.codebook.copy_(served.expand(32, 8))
        vq.ema_sum.copy_(vq.codebook)
    far = F.normalize(torch.tensor([1.0, -1, 1, -1, 1, -1, 1, -1]), dim=0)
    z = torch.cat([served.expand(255, 8), far[None]])  # one input far from every code
    vq(z)
    vq(z)  # the idle codes restart, drawn by quantisation error: onto `far`, not the 255
    sims = F.normalize(vq.codebook, dim=-1) @ far
    assert (sims > 0.99).sum() >= 29  # uniform draws would put ~0 of them there


def test_fsq_entropy_term_rewards_an_even_code_histogram() -> None:
    torch.manual_seed(0)
    fsq = FSQ([5, 5, 5], entropy_weight=1.0).train()
    spread = fsq.embed(torch.arange(125).repeat(8)) * 2  # every code, in digit units
    collapsed = torch.zeros(1000, 3)
    assert fsq._entropy_gap(spread).item() < 0.05
    assert fsq._entropy_gap(collapsed).item() > 0.9
    z = (0.1 * torch.randn(4096, 3)).requires_grad_()
    out = fsq(z)
    assert out.loss.item() > 0.3  # nearly collapsed latents pay the term
    out.loss.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert FSQ([5, 5, 5]).train()(z).loss.item() == 0.0  # off by default
    assert fsq.eval()(z).loss.item() == 0.0  # a training term only


@pytest.mark.parametrize("update", ["ema", "grad"])
def test_vq_losses_and_updates(update: str) -> None:
    vq = _vq(update=update).train()
    z = torch.randn(128, 8, requires_grad=True)
    out = vq(z)
    assert out.loss.item() > 0
    out.loss.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0  # commitment reaches the encoder
    params = dict(vq.named_parameters())
    if update == "grad":
        assert params["codebook"].grad is not None
    else:
        assert not params  # EMA codebooks are buffers, outside the optimizer
        before = vq.codebook.clone()
        vq(torch.randn(128, 8))
        assert not torch.equal(before, vq.codebook)


def test_build_quantizer_dispatch_and_errors() -> None:
    assert isinstance(build_quantizer(QuantizerConfig(type="fsq")), FSQ)
    vq = build_quantizer(QuantizerConfig(type="vq", codebook_size=16, code_dim=4))
    assert isinstance(vq, VectorQuantizer) and (vq.num_codes, vq.dim) == (16, 4)
    with pytest.raises(ValueError, match="unknown quantizer type 'lfq'.*fsq"):
        build_quantizer(QuantizerConfig(type="lfq"))
    with pytest.raises(ValueError, match="unknown vq update 'adam'"):
        VectorQuantizer(8, 4, update="adam")
