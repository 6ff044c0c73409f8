"""FLOPs, counted analytically (docs/benchmarks.md has the formulas): a multiply-add is 2 FLOPs; elementwise work
(norms, activations, gates, exponentials) is not counted. The modules give their own formulas where they have one:
each SSM kernel its `flops(tokens, cached, batch)`, each ssmlm block its `attention_shape()`; the linear layers
and the attention of foreign layers are counted here."""

import statistics
from collections.abc import Callable
from typing import NamedTuple

from torch import nn

from transformers import PreTrainedModel

from ..model.kernels import SSMKernel
from .size import BATCH_SIZE


def attended_pairs(tokens: int, context: int, chunk: int | None) -> int:
    """(query, key) pairs of causal attention for positions context .. context+tokens-1, each attending to the
    keys before it, or only to those in its own chunk of `chunk` tokens (absolute positions, as Mega-chunk)."""
    def pairs_before(n: int) -> int:  # Σ_{p < n} (keys visible at p)
        if chunk is None:
            return n * (n + 1) // 2
        return (n // chunk) * chunk * (chunk + 1) // 2 + (n % chunk) * (n % chunk + 1) // 2
    return pairs_before(context + tokens) - pairs_before(context)


class AttentionShape(NamedTuple):
    query_key_width: int  # summed over heads
    value_width: int
    chunk: int | None  # attention only inside chunks of this many tokens; None: over the whole prefix


# The attention of the layers of models that are not ssmlm's (an ssmlm block gives its own: `attention_shape()`).
# A layer class in neither is reported as not counted.
FOREIGN_ATTENTION_SHAPES: dict[str, Callable[[nn.Module], AttentionShape | None]] = {
    "LlamaDecoderLayer": lambda layer: AttentionShape(layer.self_attn.q_proj.out_features,
                                                      layer.self_attn.q_proj.out_features, None),
    "MambaBlock": lambda layer: None,
}


def mamba_scan_flops(layer: nn.Module, tokens: int, batch: int) -> float:
    """Mamba's mixer beyond its linear layers, per token and inner channel: the depthwise convolution (k taps), the
    state update h = Āh + B̄x and the readout Ch over the N states, a multiply-add each."""
    mixer = layer.mixer
    return 2 * batch * tokens * mixer.intermediate_size * (mixer.conv_kernel_size + 2 * mixer.ssm_state_size)


def attention_shape(layer: nn.Module) -> AttentionShape | None | str:
    """The layer's attention, None for a layer without one, or "unknown"."""
    if hasattr(layer, "attention_shape"):
        shape = layer.attention_shape()
        return None if shape is None else AttentionShape(*shape)
    shape_of = FOREIGN_ATTENTION_SHAPES.get(type(layer).__name__)
    return "unknown" if shape_of is None else shape_of(layer)


def forward_flops(model: PreTrainedModel, tokens: int, context: int = 0, cached: bool = False,
                  logits_tokens: int | None = None, batch: int = BATCH_SIZE) -> tuple[float, list[str]]:
    """FLOPs of one forward over `tokens` new positions after `context` cached ones, computing logits for the
    last `logits_tokens` positions (all by default). Also returns the block classes with no attention formula
    here (only their linear layers and SSMs are counted)."""
    logits_tokens = tokens if logits_tokens is None else logits_tokens
    head = model.get_output_embeddings()
    linear_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear) and m is not head)
    flops = 2 * batch * (tokens * linear_weights + logits_tokens * head.weight.numel())
    flops += sum(m.flops(tokens, cached, batch) for m in model.modules() if isinstance(m, SSMKernel))
    uncounted = set()
    for layer in model.base_model.layers:
        if type(layer).__name__ == "MambaBlock":
            flops += mamba_scan_flops(layer, tokens, batch)
        shape = attention_shape(layer)
        if shape == "unknown":
            uncounted.add(type(layer).__name__)
        elif shape is not None:
            # QKᵀ and AV: a multiply-add per width per (query, key) pair.
            pairs = attended_pairs(tokens, context, shape.chunk)
            flops += batch * 2 * (shape.query_key_width + shape.value_width) * pairs
    return flops, sorted(uncounted)


def training_flops_per_token(model: PreTrainedModel, length: int) -> tuple[float | None, list[str]]:
    """Forward + backward ≈ 3 forwards (the backward computes gradients for inputs and weights). None for a public
    implementation: the formulas here read ssmlm's and transformers 5's modules."""
    if not isinstance(model, PreTrainedModel):
        return None, []
    flops, uncounted = forward_flops(model, length)
    return 3 * flops / (BATCH_SIZE * length), uncounted


def generation_flops(model: PreTrainedModel, prompt_length: int, new_tokens: int) -> tuple[float, float, list[str]]:
    """(prefill FLOPs, mean FLOPs per decoded token, uncounted layer kinds); logits only for the last position."""
    prefill, uncounted = forward_flops(model, prompt_length, cached=True, logits_tokens=1)
    decode = statistics.fmean(
        forward_flops(model, 1, context=prompt_length + step, cached=True)[0] for step in range(new_tokens)
    )
    return prefill, decode, uncounted
