"""Attention backends agree with the plain-math reference; causal masks and KV caches are exact."""

from __future__ import annotations

import pytest
import torch

from worldsim.nn.attention import (
    MultiHeadAttention,
    auto_attention,
    causal_mask,
    get_attention_backend,
    reference_attention,
    sdpa_attention,
    xformers_available,
)
from worldsim.nn.st_block import STBlock, STTransformer


def _qkv(len_q: int, len_k: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 3, len_q, 16, generator=g)
    k = torch.randn(2, 3, len_k, 16, generator=g)
    v = torch.randn(2, 3, len_k, 16, generator=g)
    return q, k, v


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lengths", [(7, 7), (1, 9), (3, 9), (256, 256)])
def test_sdpa_matches_reference(causal: bool, lengths: tuple[int, int]) -> None:
    q, k, v = _qkv(*lengths)
    expected = reference_attention(q, k, v, causal)
    torch.testing.assert_close(sdpa_attention(q, k, v, causal), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(auto_attention(q, k, v, causal), expected, atol=1e-5, rtol=1e-4)


def test_causal_mask_is_bottom_right_aligned() -> None:
    expected = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal_mask(2, 4, torch.device("cpu")), expected)


@pytest.mark.parametrize("attend", [reference_attention, sdpa_attention])
def test_causal_output_ignores_the_future(attend) -> None:
    q, k, v = _qkv(6, 6)
    out = attend(q, k, v, True)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 4:] += 5.0
    v2[:, :, 4:] -= 3.0
    out2 = attend(q, k2, v2, True)
    torch.testing.assert_close(out[:, :, :4], out2[:, :, :4])
    assert not torch.allclose(out[:, :, 4:], out2[:, :, 4:])
    # The first query can only see the first key, so it returns the first value exactly.
    torch.testing.assert_close(out[:, :, 0], v[:, :, 0])


def test_unknown_backend_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown attention backend 'flash9'.*reference"):
        get_attention_backend("flash9")
    with pytest.raises(ValueError, match="unknown attention backend"):
        MultiHeadAttention(32, 4, backend="flash9")


@pytest.mark.skipif(xformers_available(), reason="xformers is installed here")
def test_missing_xformers_is_a_clear_error() -> None:
    with pytest.raises(ImportError, match="xformers package"):
        MultiHeadAttention(32, 4, backend="xformers")


def test_width_must_split_into_heads() -> None:
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        MultiHeadAttention(30, 4)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_module_backends_agree(qk_norm: bool) -> None:
    torch.manual_seed(0)
    ref = MultiHeadAttention(32, 4, causal=True, qk_norm=qk_norm, backend="reference")
    fast = MultiHeadAttention(32, 4, causal=True, qk_norm=qk_norm, backend="sdpa")
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(3, 10, 32)
    torch.testing.assert_close(fast(x), ref(x), atol=1e-5, rtol=1e-4)


def test_cached_keys_continue_a_causal_sequence() -> None:
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4, causal=True)
    x = torch.randn(2, 9, 32)
    full = attn(x)
    head, past = attn.forward_with_kv(x[:, :5])
    mid, past = attn.forward_with_kv(x[:, 5:8], past)  # several new positions at once
    last, past = attn.forward_with_kv(x[:, 8:], past)  # one at a time
    torch.testing.assert_close(torch.cat([head, mid, last], dim=1), full, atol=1e-5, rtol=1e-4)
    assert past.key.shape == (2, 4, 9, 8)


def test_st_block_shapes_and_time_causality() -> None:
    torch.manual_seed(0)
    block = STBlock(32, 4, backend="reference")
    x = torch.randn(2, 5, 6, 32)  # (B, T, N, D)
    out = block(x)
    assert out.shape == x.shape
    x2 = x.clone()
    x2[:, 3:] = torch.randn_like(x2[:, 3:])
    out2 = block(x2)
    torch.testing.assert_close(out[:, :3], out2[:, :3])
    assert not torch.allclose(out[:, 3:], out2[:, 3:])


def test_st_block_without_causal_time_sees_the_future() -> None:
    torch.manual_seed(0)
    block = STBlock(32, 4, causal_time=False)
    x = torch.randn(1, 4, 3, 32)
    x2 = x.clone()
    x2[:, -1] = torch.randn_like(x2[:, -1])
    assert not torch.allclose(block(x)[:, 0], block(x2)[:, 0])


def test_st_transformer_frame_by_frame_equals_full_clip() -> None:
    torch.manual_seed(0)
    model = STTransformer(32, depth=2, num_heads=4)
    x = torch.randn(2, 4, 6, 32)
    full = model(x)
    out, caches = model.forward_with_kv(x[:, :3])
    step, caches = model.forward_with_kv(x[:, 3:], caches)
    torch.testing.assert_close(torch.cat([out, step], dim=1), full, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="caches for 2 blocks"):
        model.forward_with_kv(x, caches[:1])
