"""SSMLMConfig: one Hugging Face config for every ssmlm model, its layers listed by block kind."""

from huggingface_hub.dataclasses import strict

from transformers import PreTrainedConfig

BLOCK_TYPES = ("gss", "mega", "attention")
SSM_KERNELS = ("dss", "s4d")
MEGA_ATTENTION_FUNCTIONS = ("softmax", "laplace")
MEGA_POSITION_BIASES = ("simple", "rotary")
ATTENTION_SPANS = ("full", "sliding", "chunked")


@strict
class SSMLMConfig(PreTrainedConfig):
    r"""
    Configuration of an ssmlm language model. Sizes default to the GSS paper's proportions
    (E=1024, F=4096, H=256, N=512): set `hidden_size` alone and the others follow as F = 4E, H = E/4, N = 2H.

    vocab_size (`int`): tokens in the vocabulary.
    hidden_size (`int`): E, the residual stream width.
    num_hidden_layers (`int`): number of blocks.
    block_types (`list[str]`, *optional*): the kind of each block, one of `BLOCK_TYPES`; defaults to all "gss".
        (Not `layer_types`: transformers validates that name against its own attention kinds.)
    intermediate_size (`int`, *optional*): F, the width of GSS's gated GELU branch and of the normalised
        feed-forward network of the Mega and Transformer blocks (default 4E).
    ssm_size (`int`, *optional*): H, the narrow width the SSM runs in (default E/4).
    ssm_state_size (`int`, *optional*): N, complex modes per SSM channel (default 2H); the real state is 2N.
    ssm_kernel (`str`): "dss" (DSS-exp with Δ = 1 and modes shared across channels, as in GSS) or "s4d".
    s4d_init (`str`): "lin" or "inv", S4D's initialisation of Λ.
    s4d_discretization (`str`): "zoh" or "bilinear".
    s4d_dt_min, s4d_dt_max (`float`): range of S4D's log-uniform step sizes Δ.
    mega_ema_dim (`int`): n, the expansion dimension of Mega's damped EMA per channel (the paper uses 16).
    mega_z_dim (`int`, *optional*): width of Mega's shared representation Z, queries and keys (default E/4).
    mega_v_dim (`int`, *optional*): width of Mega's values and reset gate (default 2E).
    mega_chunk_size (`int`, *optional*): c; Mega-chunk attends only inside chunks of c tokens. None (or -1,
        stored as None) is full causal attention, whose cache grows with the sequence.
    mega_attention (`str`): Mega's attention function, "softmax" or "laplace".
    mega_position_bias (`str`): Mega's relative position bias, "simple" (one learned scalar per distance) or
        "rotary" (a rotary-embedding bias, any distance).
    mega_max_positions (`int`): longest sequence full-attention Mega accepts with the "simple" bias; longer ones
        raise (Mega-chunk needs only c distances).
    attention_num_heads (`int`): heads of the Transformer ("attention") blocks; hidden_size must divide by it.
    attention_span (`str`): "full" (causal over everything), "sliding" (the last `attention_window` tokens) or
        "chunked" (block-local: tokens in the same chunk of `attention_window` positions).
    attention_window (`int`, *optional*): w for sliding and chunked spans; their cache keeps w keys.
    rope_theta (`float`): base of the rotary position embedding of the attention blocks.
    attention_dropout (`float`): dropout on attention weights (Mega's and the Transformer blocks').
    mega_hidden_dropout (`float`): dropout on Mega's values and on the hidden layer of its feed-forward network.
    layer_norm_eps (`float`): LayerNorm epsilon.
    hidden_dropout (`float`): dropout on each block's output before the residual sum (for Mega also on the EMA
        output, as the paper's "dropout").
    initializer_range (`float`): standard deviation of the linear and embedding weights at init.
    use_cache (`bool`): return the recurrent state so generation continues without re-reading the prefix.
    tie_word_embeddings (`bool`): share the input embedding with the output projection.
    """

    model_type = "ssmlm"

    vocab_size: int = 32000
    hidden_size: int = 1024
    num_hidden_layers: int = 16
    block_types: list[str] | None = None
    intermediate_size: int | None = None
    ssm_size: int | None = None
    ssm_state_size: int | None = None
    ssm_kernel: str = "dss"
    s4d_init: str = "inv"
    s4d_discretization: str = "zoh"
    s4d_dt_min: float = 1e-3
    s4d_dt_max: float = 1e-1
    mega_ema_dim: int = 16
    mega_z_dim: int | None = None
    mega_v_dim: int | None = None
    mega_chunk_size: int | None = None
    mega_attention: str = "softmax"
    mega_position_bias: str = "simple"
    mega_max_positions: int = 2048
    attention_num_heads: int = 4
    attention_span: str = "full"
    attention_window: int | None = None
    rope_theta: float = 10000.0
    attention_dropout: float = 0.0
    mega_hidden_dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    hidden_dropout: float = 0.0
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        self.intermediate_size = self.intermediate_size or 4 * self.hidden_size
        self.ssm_size = self.ssm_size or max(1, self.hidden_size // 4)
        self.ssm_state_size = self.ssm_state_size or 2 * self.ssm_size
        self.block_types = list(self.block_types or ["gss"] * self.num_hidden_layers)
        self.mega_z_dim = self.mega_z_dim or max(1, self.hidden_size // 4)
        self.mega_v_dim = self.mega_v_dim or 2 * self.hidden_size
        if self.mega_chunk_size == -1:
            self.mega_chunk_size = None  # the reference code's spelling of full attention
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of `@strict` validation: names the offending field."""
        super().validate_architecture()
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "ssm_size",
                     "ssm_state_size", "mega_ema_dim", "mega_z_dim", "mega_v_dim", "mega_max_positions"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SSMLMConfig.{name} must be positive, got {getattr(self, name)}")
        if len(self.block_types) != self.num_hidden_layers:
            raise ValueError(
                f"SSMLMConfig.block_types has {len(self.block_types)} entries but num_hidden_layers is "
                f"{self.num_hidden_layers}"
            )
        unknown = sorted(set(self.block_types) - set(BLOCK_TYPES))
        if unknown:
            raise ValueError(f"SSMLMConfig.block_types: unknown block kind(s) {unknown}; expected {BLOCK_TYPES}")
        if self.ssm_kernel not in SSM_KERNELS:
            raise ValueError(f"SSMLMConfig.ssm_kernel must be one of {SSM_KERNELS}, got {self.ssm_kernel!r}")
        if self.s4d_init not in ("lin", "inv"):
            raise ValueError(f"SSMLMConfig.s4d_init must be 'lin' or 'inv', got {self.s4d_init!r}")
        if self.s4d_discretization not in ("zoh", "bilinear"):
            raise ValueError(
                f"SSMLMConfig.s4d_discretization must be 'zoh' or 'bilinear', got {self.s4d_discretization!r}"
            )
        if self.mega_chunk_size is not None and self.mega_chunk_size <= 0:
            raise ValueError(
                "SSMLMConfig.mega_chunk_size must be positive, or None / -1 for full attention, "
                f"got {self.mega_chunk_size}"
            )
        if self.mega_attention not in MEGA_ATTENTION_FUNCTIONS:
            raise ValueError(
                f"SSMLMConfig.mega_attention must be one of {MEGA_ATTENTION_FUNCTIONS}, got {self.mega_attention!r}"
            )
        if self.mega_position_bias not in MEGA_POSITION_BIASES:
            raise ValueError(
                f"SSMLMConfig.mega_position_bias must be one of {MEGA_POSITION_BIASES}, got {self.mega_position_bias!r}"
            )
        if self.mega_position_bias == "rotary" and self.mega_z_dim % 2:
            raise ValueError(f"SSMLMConfig.mega_z_dim must be even for the rotary bias, got {self.mega_z_dim}")
        if self.attention_span not in ATTENTION_SPANS:
            raise ValueError(
                f"SSMLMConfig.attention_span must be one of {ATTENTION_SPANS}, got {self.attention_span!r}"
            )
        if self.attention_span != "full" and (self.attention_window is None or self.attention_window <= 0):
            raise ValueError(
                f"SSMLMConfig.attention_window must be a positive int for attention_span={self.attention_span!r}, "
                f"got {self.attention_window}"
            )
        if self.attention_num_heads <= 0 or self.hidden_size % self.attention_num_heads:
            raise ValueError(
                f"SSMLMConfig.attention_num_heads ({self.attention_num_heads}) must be positive and divide "
                f"hidden_size ({self.hidden_size})"
            )
        if (self.hidden_size // self.attention_num_heads) % 2:
            raise ValueError(
                "SSMLMConfig.attention_num_heads: the head size hidden_size / attention_num_heads must be even for "
                f"rotary positions, got {self.hidden_size // self.attention_num_heads}"
            )
        for name in ("hidden_dropout", "attention_dropout", "mega_hidden_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"SSMLMConfig.{name} must be in [0, 1), got {getattr(self, name)}")


__all__ = ["SSMLMConfig"]
