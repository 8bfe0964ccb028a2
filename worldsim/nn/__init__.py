"""Layers shared by every worldsim model: attention backends and spatiotemporal blocks."""

from worldsim.nn.attention import (
    ATTENTION_BACKENDS,
    KeyValue,
    MultiHeadAttention,
    get_attention_backend,
    reference_attention,
    sdpa_attention,
)
from worldsim.nn.st_block import STBlock, STTransformer

__all__ = [
    "ATTENTION_BACKENDS",
    "KeyValue",
    "MultiHeadAttention",
    "STBlock",
    "STTransformer",
    "get_attention_backend",
    "reference_attention",
    "sdpa_attention",
]
