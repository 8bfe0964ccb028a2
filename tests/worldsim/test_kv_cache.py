"""Preallocated KV caches: the window rule, exactness against the full pass, copy-on-write
between states; and the attention backend registry (flash-attn guard, agreement, auto)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from worldsim.nn import attention
from worldsim.nn.attention import (
    MultiHeadAttention,
    available_backends,
    check_backends_agree,
    get_attention_backend,
    set_attention_backend,
    set_query_by_query,
)
from worldsim.nn.kv_cache import KVCache, check_hop, frames_to_drop, window_start
from worldsim.nn.st_block import STTransformer

T, N, D = 9, 4, 32


@pytest.fixture()
def model() -> STTransformer:
    torch.manual_seed(0)
    return STTransformer(D, 2, 4, mlp_ratio=2.0).eval()


def frames(t: int = T, b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, t, N, D, generator=torch.Generator().manual_seed(seed))


def test_window_start_is_the_window_rule_applied_frame_by_frame() -> None:
    for max_frames, hop in ((8, 3), (8, 7), (16, 8), (5, 1), (16, 15)):
        start = 0
        for frame in range(1, 60):  # frame joins the window [start, frame - 1]
            start += frames_to_drop(frame - start, max_frames, hop)
            assert window_start(frame, max_frames, hop) == start, (max_frames, hop, frame)


def test_window_start_jumps_by_whole_hops() -> None:
    starts = [window_start(k, 8, 3) for k in range(16)]
    assert starts == [0] * 8 + [3] * 3 + [6] * 3 + [9] * 2
    assert all(k - s + 1 <= 8 for k, s in enumerate(starts))
    assert [window_start(k, 8, 7) for k in (7, 8, 14, 15)] == [0, 7, 7, 14]
    with pytest.raises(ValueError, match="window hop must lie in 1..max_frames-1 = 1..7, got 8"):
        check_hop(8, 8)
    with pytest.raises(ValueError, match="got 0"):
        window_start(3, 8, 0)


def test_cached_frames_match_the_full_pass_exactly(model: STTransformer) -> None:
    x = frames()
    with torch.no_grad():
        full = model(x)
        cache = model.empty_cache(2 * N, 16, torch.float32, "cpu")
        out, cache = model.forward_cached(x[:, :4], cache, commit=True)  # prefill
        torch.testing.assert_close(out, full[:, :4], atol=1e-6, rtol=0)
        for t in range(4, T):
            out, cache = model.forward_cached(x[:, t : t + 1], cache, commit=True)
            torch.testing.assert_close(out[:, 0], full[:, t], atol=1e-5, rtol=0)
        assert cache.length == T
        set_query_by_query(model)  # one query at a time: the same kernels, bit for bit
        full = model(x)
        cache = model.empty_cache(2 * N, 16, torch.float32, "cpu")
        _, cache = model.forward_cached(x[:, :4], cache, commit=True)
        for t in range(4, T):
            out, cache = model.forward_cached(x[:, t : t + 1], cache, commit=True)
            assert torch.equal(out[:, 0], full[:, t])


def test_uncommitted_frames_are_scratch(model: STTransformer) -> None:
    x = frames()
    with torch.no_grad():
        cache = model.empty_cache(2 * N, 16, torch.float32, "cpu")
        _, cache = model.forward_cached(x[:, :5], cache, commit=True)
        first, same = model.forward_cached(x[:, 5:6], cache, commit=False)
        assert same is cache and cache.length == 5
        model.forward_cached(x[:, 7:8], cache, commit=False)  # overwrites the scratch slot
        again, _ = model.forward_cached(x[:, 5:6], cache, commit=False)
        assert torch.equal(first, again)


def test_caches_are_values_copy_on_write(model: STTransformer) -> None:
    x, y = frames(), frames(seed=1)
    with torch.no_grad():
        base = model.empty_cache(2 * N, 16, torch.float32, "cpu")
        _, base = model.forward_cached(x[:, :3], base, commit=True)
        _, left = model.forward_cached(x[:, 3:4], base, commit=True)
        _, right = model.forward_cached(y[:, 3:4], base, commit=True)  # branches: copies
        assert right.storage is not left.storage and left.storage is base.storage
        out_left, _ = model.forward_cached(x[:, 4:5], left, commit=False)
        expected, _ = model.forward_with_kv(x[:, :5])
        torch.testing.assert_close(out_left[:, 0], expected[:, 4], atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="cache holds 16 positions"):
            model.forward_cached(frames(14), left, commit=True)
        with pytest.raises(ValueError, match="1 layers for 2 blocks"):
            model.forward_cached(
                x[:, :1], KVCache.empty(1, (8, 4, 4, 8), torch.float32, "cpu"), commit=True
            )


def test_caches_of_different_lengths_step_in_one_pass(model: STTransformer) -> None:
    x, y = frames(b=1), frames(b=2, seed=1)  # a world with 3 frames cached, two with 6
    with torch.no_grad():
        short = model.forward_cached(x[:, :3], model.empty_cache(N, 16, torch.float32, "cpu"),
                                     commit=True)[1]  # fmt: skip
        long = model.forward_cached(y[:, :6], model.empty_cache(2 * N, 16, torch.float32, "cpu"),
                                    commit=True)[1]  # fmt: skip
        new = torch.cat([x[:, 3:4], y[:, 6:7]])
        out, (short2, long2) = model.forward_cached_many(new, [short, long], commit=True)
        assert torch.equal(out[:1], model.forward_cached(x[:, 3:4], short, commit=False)[0])
        assert torch.equal(out[1:], model.forward_cached(y[:, 6:7], long, commit=False)[0])
        assert (short2.length, long2.length) == (4, 7)
        with pytest.raises(ValueError, match="hold 8 token rows for a batch of 12"):
            model.forward_cached_many(new, [long], commit=False)


def test_query_by_query_changes_no_result(model: STTransformer) -> None:
    x = frames()
    with torch.no_grad():
        fused = model(x)
        assert set_query_by_query(model) == 2  # the temporal layers only
        torch.testing.assert_close(model(x), fused, atol=1e-5, rtol=0)


def test_backends_agree_within_bf16_tolerance_on_cpu() -> None:
    report = check_backends_agree("cpu", torch.bfloat16)
    assert report.ok and set(report.max_errors) == {"sdpa", "reference"}
    assert "agree" in report.render()
    strict = check_backends_agree("cpu", torch.bfloat16, tolerance=1e-6)
    assert not strict.ok and "DISAGREE" in strict.render()


def test_auto_picks_and_remembers_an_available_fused_kernel(monkeypatch) -> None:
    monkeypatch.setattr(attention, "_AUTO_CHOICE", {})
    q = torch.randn(2, 4, 6, 8)
    torch.testing.assert_close(
        attention.auto_attention(q, q, q, True), attention.reference_attention(q, q, q, True)
    )
    choice = attention._AUTO_CHOICE
    assert choice == {("cpu", None, torch.float32): "sdpa"}
    assert available_backends("cpu", torch.float32) == ["sdpa", "reference"]


def test_set_attention_backend_switches_every_layer(model: STTransformer) -> None:
    assert set_attention_backend(model, "reference") == 4
    layers = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    assert {m.backend for m in layers} == {"reference"}
    with pytest.raises(ValueError, match="unknown attention backend"):
        set_attention_backend(model, "flash9")


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="installed")
def test_missing_flash_attn_is_a_clear_error() -> None:
    with pytest.raises(ImportError, match="flash-attn package"):
        get_attention_backend("flash_attn")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_backends_agree_on_cuda() -> None:
    report = check_backends_agree("cuda", torch.bfloat16)
    assert report.ok, report.render()
    x = frames().cuda()
    model = STTransformer(D, 2, 4).cuda().eval()
    with torch.no_grad():
        cache = model.empty_cache(2 * N, 16, torch.float32, "cuda")
        _, cache = model.forward_cached(x[:, :8], cache, commit=True)
        out, _ = model.forward_cached(x[:, 8:], cache, commit=True)
        torch.testing.assert_close(out, model(x)[:, 8:], atol=1e-4, rtol=0)
