"""Frame-by-frame decoding with the decoder's KV cache equals `decode` on the same window,
before and after the window jumps; the uncached state re-decodes the window."""

from __future__ import annotations

import pytest
import torch

from tokenizer.config import tokenizer_preset
from tokenizer.model import VideoTokenizer
from worldsim.nn.kv_cache import window_start

B, G = 2, 4


@pytest.fixture(scope="module")
def tokenizer() -> VideoTokenizer:
    torch.manual_seed(0)
    return VideoTokenizer(tokenizer_preset("tiny")).eval()  # max_frames 8


def stream(tokenizer: VideoTokenizer, frames: int = 20) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, tokenizer.num_codes, (B, frames, G, G), generator=gen)


@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.parametrize("hop", [1, 3, 7])
def test_step_decode_equals_decode_of_the_window(
    tokenizer: VideoTokenizer, cached: bool, hop: int
) -> None:
    tokens = stream(tokenizer)
    with torch.no_grad():
        frames, state = tokenizer.decode_start(tokens[:, :3], hop=hop, cached=cached)
        torch.testing.assert_close(frames, tokenizer.decode(tokens[:, :3]), atol=1e-6, rtol=0)
        for k in range(3, tokens.shape[1]):
            frame, state = tokenizer.decode_step(tokens[:, k], state)
            start = window_start(k, tokenizer.cfg.max_frames, hop)
            assert torch.equal(state.tokens_BThw, tokens[:, start : k + 1])
            expected = tokenizer.decode(tokens[:, start : k + 1])[:, -1]
            torch.testing.assert_close(frame, expected, atol=1e-5, rtol=0)
    assert frame.shape == (B, 3, 16, 16) and frame.abs().max() <= 1
    assert (state.cache is None) != cached


def test_decode_state_is_not_changed_by_a_step(tokenizer: VideoTokenizer) -> None:
    tokens = stream(tokenizer)
    with torch.no_grad():
        _, state = tokenizer.decode_start(tokens[:, :4])
        first, _ = tokenizer.decode_step(tokens[:, 4], state)
        tokenizer.decode_step(tokens[:, 5], state)  # another branch from the same state
        again, _ = tokenizer.decode_step(tokens[:, 4], state)
    assert torch.equal(first, again) and state.tokens_BThw.shape[1] == 4


def test_bad_decode_inputs_are_named(tokenizer: VideoTokenizer) -> None:
    tokens = stream(tokenizer)
    with torch.no_grad():
        _, state = tokenizer.decode_start(tokens[:, :2])
        with pytest.raises(ValueError, match="tokens for 1 clips, decoder state for 2"):
            tokenizer.decode_step(tokens[:1, 2], state)
        with pytest.raises(ValueError, match="token ids must lie in"):
            tokenizer.decode_step(tokens[:, 2] + tokenizer.num_codes, state)
        with pytest.raises(ValueError, match="window hop must lie in"):
            tokenizer.decode_start(tokens[:, :2], hop=8)
        with pytest.raises(ValueError, match="1..8 frames"):
            tokenizer.decode_start(tokens[:, :9])
