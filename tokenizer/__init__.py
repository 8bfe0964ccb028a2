"""Causal VQ video tokenizer: frames (B, T, C, H, W) in [-1, 1] <-> tokens (B, T, h, w)."""

from tokenizer.config import PRESETS, QuantizerConfig, TokenizerConfig, tokenizer_preset
from tokenizer.model import TokenizerOutput, VideoTokenizer, frame_psnr
from tokenizer.quantizers import FSQ, QuantizerOutput, VectorQuantizer, build_quantizer

__all__ = [
    "FSQ",
    "PRESETS",
    "QuantizerConfig",
    "QuantizerOutput",
    "TokenizerConfig",
    "TokenizerOutput",
    "VectorQuantizer",
    "VideoTokenizer",
    "build_quantizer",
    "frame_psnr",
    "tokenizer_preset",
]
