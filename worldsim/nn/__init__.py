"""Layers shared by every worldsim model: attention backends, spatiotemporal blocks and the
save/load convention."""

from worldsim.nn.attention import (
    ATTENTION_BACKENDS,
    KeyValue,
    MultiHeadAttention,
    get_attention_backend,
    reference_attention,
    sdpa_attention,
)
from worldsim.nn.pretrained import PretrainedModel
from worldsim.nn.st_block import STBlock, STTransformer

__all__ = [
    "ATTENTION_BACKENDS",
    "KeyValue",
    "MultiHeadAttention",
    "PretrainedModel",
    "STBlock",
    "STTransformer",
    "get_attention_backend",
    "reference_attention",
    "sdpa_attention",
]
