"""SSMLMConfig: one Hugging Face config for every ssmlm model, its layers listed by block kind."""

import dataclasses
import difflib
from pathlib import Path

from huggingface_hub.dataclasses import strict

from transformers import GenerationConfig, PreTrainedConfig
from transformers.utils import logging

from .blocks import BLOCKS
from .kernels import KERNELS, check_options
from .legacy import LEGACY_FIELDS, upgrade_legacy_fields

logger = logging.get_logger(__name__)


REMOTE_MODULE_NAME = "ssmlm_remote"  # the module saved beside a model's weights, for trust_remote_code
AUTO_CLASSES = {"AutoConfig": "SSMLMConfig", "AutoModel": "SSMLMModel", "AutoModelForCausalLM": "SSMLMForCausalLM",
                "AutoModelForSequenceClassification": "SSMLMForSequenceClassification"}

# The module every saved config carries (named in its auto_map), so that transformers can load the model by path
# with trust_remote_code=True in a process that never imported ssmlm: it imports the installed package, or says
# what to install. Its classes are subclasses defined in the module itself: transformers saves a model (or config)
# loaded through remote code by copying the file that defines its class, with that file's relative imports, and
# this file has none (ssmlm's own modules import from a package, which that copy cannot follow).
REMOTE_MODULE = f'''"""Loads this ssmlm model with the installed ssmlm package (trust_remote_code=True)."""

try:
    import ssmlm
except ImportError as error:
    raise ImportError("this model needs the ssmlm package, which is not on the package index: install it from its "
                      "source, pip install PATH/TO/ssmlm (a checkout) or pip install ssmlm-VERSION-py3-none-any.whl "
                      "(a wheel built there)") from error


class SSMLMConfig(ssmlm.SSMLMConfig):
    pass
''' + "".join(f'''

class {name}(ssmlm.{name}):
    config_class = SSMLMConfig
''' for name in sorted(set(AUTO_CLASSES.values()) - {"SSMLMConfig"}))


# Keyword arguments that are no field of SSMLMConfig and yet legitimate: what transformers itself passes when it
# builds a config from a saved one or from from_pretrained's arguments (PreTrainedConfig.__post_init__ takes them).
TRANSFORMERS_EXTRA_SETTINGS = {
    "auto_map", "model_type", "name_or_path", "num_labels", "torch_dtype", "transformers_version", "output_attentions",
    "attn_implementation", "experts_implementation", "per_layer_config", "rope_scaling", "quantization_config",
}


def check_extra_settings(kwargs: dict) -> None:
    """Refuse a setting that SSMLMConfig does not have: PreTrainedConfig would keep `hiden_size=64` as an attribute
    nobody reads and build the default width. A saved config (it names its model_type) may carry attributes that
    other tools added: those load, with a warning naming them."""
    unknown = sorted(key for key in kwargs if key not in TRANSFORMERS_EXTRA_SETTINGS and not key.startswith("_")
                     and key not in GenerationConfig._get_default_generation_params())
    if not unknown:
        return
    fields = [field.name for field in dataclasses.fields(SSMLMConfig)]
    described = ", ".join(
        key + "".join(f" (did you mean {close!r}?)" for close in difflib.get_close_matches(key, fields, n=1))
        for key in unknown)
    if "model_type" in kwargs:
        logger.warning(f"SSMLMConfig: the saved config has settings ssmlm does not know, kept as attributes and "
                       f"unused: {described}")
    else:
        raise ValueError(f"SSMLMConfig has no setting {described}")


def plain_options(options):
    """A kind's options with tuples as lists, as config.json gives them back; anything but a mapping as it is."""
    if not isinstance(options, dict):
        return options
    return {key: list(value) if isinstance(value, tuple) else value for key, value in options.items()}


@strict
class SSMLMConfig(PreTrainedConfig):
    r"""
    Configuration of an ssmlm language model. Sizes default to the GSS paper's proportions
    (E=1024, F=4096, H=256, N=512): set `hidden_size` alone and the others follow as F = 4E, H = E/4, N = 2H.

    vocab_size (`int`): tokens in the vocabulary.
    hidden_size (`int`): E, the residual stream width.
    num_hidden_layers (`int`): number of blocks.
    block_types (`list[str]`, *optional*): the kind of each block, a name in `ssmlm.model.blocks.BLOCKS`; defaults to
        all "gss".
        (Not `layer_types`: transformers validates that name against its own attention kinds.)
    intermediate_size (`int`, *optional*): F, the width of GSS's gated GELU branch and of the normalised
        feed-forward network of the Mega and Transformer blocks (default 4E).
    ssm_size (`int`, *optional*): H, the narrow width the SSM runs in (default E/4).
    ssm_state_size (`int`, *optional*): N, complex modes per SSM channel (default 2H, or the kernel's own: 32
        for S4); the real state is 2N.
    ssm_kernel (`str`): the SSM of the GSS and plain SSM blocks, a name in `ssmlm.model.kernels.KERNELS`: "dss"
        (DSS-exp with Δ = 1 and modes shared across channels, as in GSS), "s4d", ... (docs/kernels.md).
    ssm_kernel_options (`dict`, *optional*): that kernel's options, e.g. {"init": "lin"} for S4D; each kernel
        lists its own (`OPTIONS`) and their defaults (docs/kernels.md). Configs saved with the former flat
        `s4d_init`, `s4d_discretization`, `s4d_dt_min` and `s4d_dt_max` fields load into it.
    block_options (`dict`, *optional*): each block kind's options, by kind, e.g. {"mega": {"chunk_size": 128},
        "attention": {"num_heads": 8, "span": "sliding", "window": 256}, "h3": {"state_size": 64}}; each block
        declares its own (`OPTIONS`, their defaults in its constructor; docs/kernels.md lists them). Configs saved
        with the former flat `mega_*`, `attention_*`, `h3_*`, `rope_theta` and `mega_hidden_dropout` fields load into
        it.
    layer_norm_eps (`float`): LayerNorm epsilon.
    hidden_dropout (`float`): dropout on each block's output before the residual sum (for Mega also on the EMA
        output, as the paper's "dropout"; Mega's own hidden_dropout is one of its block options).
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
    ssm_kernel_options: dict | None = None
    block_options: dict | None = None
    layer_norm_eps: float = 1e-5
    hidden_dropout: float = 0.0
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        legacy = {key: kwargs.pop(key) for key in LEGACY_FIELDS if key in kwargs}
        check_extra_settings(kwargs)
        self.block_types = list(["gss"] * self.num_hidden_layers if self.block_types is None else self.block_types)
        upgraded = upgrade_legacy_fields({**legacy, "ssm_kernel": self.ssm_kernel, "block_types": self.block_types,
                                          "ssm_kernel_options": self.ssm_kernel_options,
                                          "block_options": self.block_options}, saved="model_type" in kwargs)
        self.ssm_kernel_options = dict(upgraded.get("ssm_kernel_options") or {})
        block_options = upgraded.get("block_options") or {}
        # Each kind's options as plain JSON values (a tuple is saved and read back as a list); a kind given None has
        # none (a config that extends another can drop that one's kind this way); anything that is no mapping is
        # refused below, by name.
        self.block_options = ({kind: plain_options(options) for kind, options in block_options.items()
                               if options is not None}
                              if isinstance(block_options, dict) else block_options)
        # Defaults only for what was left unset (None): a 0 or an empty list is the user's value, refused below.
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        if self.ssm_size is None:
            self.ssm_size = max(1, self.hidden_size // 4)
        if self.ssm_state_size is None:
            kernel_default = getattr(KERNELS.get(self.ssm_kernel), "DEFAULT_STATE_SIZE", None)
            self.ssm_state_size = kernel_default or 2 * self.ssm_size
        super().__post_init__(**kwargs)
        # Saved in config.json: with trust_remote_code=True, transformers loads the classes through the module
        # saved beside it (REMOTE_MODULE, written by save_pretrained), which imports this package, in a process
        # that never imported it (lm-eval, TRL, pipeline() by path).
        self.auto_map = {auto_class: f"{REMOTE_MODULE_NAME}.{name}" for auto_class, name in AUTO_CLASSES.items()}

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """transformers' save_pretrained, and the module the auto_map names (REMOTE_MODULE). The model's
        save_pretrained calls this one after noting the files' times, so with push_to_hub=True the module is
        uploaded with the weights."""
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        (Path(save_directory) / f"{REMOTE_MODULE_NAME}.py").write_text(REMOTE_MODULE, encoding="utf-8")

    def block_options_of(self, kind: str) -> dict:
        """Every option of the block kind `kind` in this model, the ones the config leaves out at their defaults."""
        return BLOCKS[kind].with_defaults((self.block_options or {}).get(kind, {}))

    def validate_architecture(self):
        """Part of `@strict` validation: names the offending field. The SSM's settings (ssm_size, ssm_state_size,
        ssm_kernel and its options) are always checked; each block kind's options where the model has that kind or
        the config gives them."""
        super().validate_architecture()
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "ssm_size",
                     "ssm_state_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SSMLMConfig.{name} must be positive, got {getattr(self, name)}")
        if len(self.block_types) != self.num_hidden_layers:
            raise ValueError(
                f"SSMLMConfig.block_types has {len(self.block_types)} entries but num_hidden_layers is "
                f"{self.num_hidden_layers}"
            )
        unknown = sorted(set(self.block_types) - set(BLOCKS))
        if unknown:
            raise ValueError(f"SSMLMConfig.block_types: unknown block kind(s) {unknown}; expected one of "
                             f"{', '.join(BLOCKS)}")
        if self.ssm_kernel not in KERNELS:
            raise ValueError(f"SSMLMConfig.ssm_kernel must be one of {', '.join(KERNELS)}, got {self.ssm_kernel!r}")
        check_options(self.ssm_kernel, self.ssm_kernel_options, "SSMLMConfig.ssm_kernel_options", self.ssm_state_size)
        if not 0 <= self.hidden_dropout < 1:
            raise ValueError(f"SSMLMConfig.hidden_dropout must be in [0, 1), got {self.hidden_dropout}")
        if not isinstance(self.block_options, dict):
            raise ValueError(f"SSMLMConfig.block_options must be a mapping of block kinds to their options, got "
                             f"{type(self.block_options).__name__}")
        for kind in self.block_options:
            if kind not in BLOCKS:
                close = difflib.get_close_matches(str(kind), BLOCKS, n=1)
                raise ValueError(f"SSMLMConfig.block_options.{kind}: no block kind of that name"
                                 f"{f' (did you mean {close[0]!r}?)' if close else ''}; expected one of "
                                 f"{', '.join(BLOCKS)}")
        for kind in dict.fromkeys([*self.block_types, *self.block_options]):  # the defaults of the kinds used too
            BLOCKS[kind].validate_options(self.block_options.get(kind, {}), f"SSMLMConfig.block_options.{kind}", self)


__all__ = ["SSMLMConfig"]
