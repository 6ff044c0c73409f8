"""The Hugging Face face of ssmlm: SSMLMModel, SSMLMForCausalLM and SSMLMForSequenceClassification.

Training runs each block in convolutional mode (one FFT pass, no state). With a cache, a block continues from
its state: generate() prefills the whole prompt in one convolutional pass that also returns the state, then
steps one token at a time; it never re-reads the prefix.
"""

import torch
from huggingface_hub.errors import StrictDataclassError
from torch import nn
from torch.nn import functional as F

from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_layers import GenericForSequenceClassification
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import can_return_tuple, logging

from .blocks import BLOCKS, build_block
from .blocks.attention_bias import RotaryRelativeBias, SimpleRelativeBias
from .blocks.mega import QueryKeyScaleOffset
from .cache import SSMLMCache
from .compat import CACHE_ARGUMENT, cache_argument
from .configuration import SSMLMConfig
from .kernels import SSMKernel
from .ops.linear_cross_entropy import IGNORE_INDEX, linear_cross_entropy

logger = logging.get_logger(__name__)

# Modules with parameters of their own: post_init's `_init_weights` re-initialises them by their reset_parameters().
CUSTOM_INIT_MODULES = (SSMKernel, QueryKeyScaleOffset, SimpleRelativeBias, RotaryRelativeBias)


# The linear layers of every block kind (lm_head aside), for LoRA: peft has no default targets for model_type "ssmlm",
# so pass LoraConfig(target_modules=LORA_TARGET_MODULES), or peft's "all-linear", which picks the same layers.
LORA_TARGET_MODULES = ["to_u", "to_v", "to_gate", "to_out", "to_qkv", "up", "down", "to_values", "from_shared",
                       "from_attention"]


class SSMLMPreTrainedModel(PreTrainedModel):
    config_class = SSMLMConfig
    config: SSMLMConfig
    base_model_prefix = "model"
    _no_split_modules = [block.__name__ for block in BLOCKS.values()]
    supports_gradient_checkpointing = True
    _supports_sdpa = True  # the attention blocks (attention.py) run torch's scaled_dot_product_attention

    def __init__(self, config: SSMLMConfig, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        # The block classes this model has, not all of them: FSDP's layer wrapping (and Accelerate's) looks each name
        # up in the model and refuses one it cannot find.
        self._no_split_modules = sorted({BLOCKS[kind].__name__ for kind in config.block_types})

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, CUSTOM_INIT_MODULES):
            module.reset_parameters()


def check_consistent(config: SSMLMConfig) -> None:
    """Validate the config again at build: fields edited after construction (num_hidden_layers without block_types,
    ...) are caught here, in one line naming the field, not when the model is saved."""
    try:
        config.validate()
    except StrictDataclassError as error:
        raise ValueError(" ".join(str(error.__cause__ or error).split())) from None


class SSMLMModel(SSMLMPreTrainedModel):
    def __init__(self, config: SSMLMConfig):
        check_consistent(config)
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(build_block(kind, config) for kind in config.block_types)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: SSMLMCache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: SSMLMCache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast | tuple:
        """`cache` (or `past_key_values`, its name before transformers 5.24) is the SSMLMCache a previous call
        returned; the output returns it under the name of the installed release. `output_attentions` gives each
        attention block's weights (block.attention_weights) and None for the blocks that have none."""
        cache = cache_argument(cache, past_key_values)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        # Caching costs a state computation per block: on by default for inference, off for training.
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if cache is not None and not isinstance(cache, SSMLMCache):
            raise TypeError(f"the cache must be the SSMLMCache this model returned, got {type(cache).__name__}")

        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch_size, length = hidden.shape[:2]
        if length == 0:
            raise ValueError("the input is empty: give at least one token (an empty prompt has nothing to continue)")
        if use_cache and cache is None:
            cache = SSMLMCache(len(self.layers))
        if cache is not None:
            cache.check_fits(len(self.layers), batch_size)
        # The mask may span the cached prefix too (as in generate()); only the current positions matter here.
        padding_mask = None
        if attention_mask is not None and not bool(attention_mask[:, -length:].all()):
            padding_mask = attention_mask[:, -length:]
        if output_attentions:
            warn_of_blocks_without_attention(self.layers)

        all_hidden = [] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        for index, block in enumerate(self.layers):
            state = None
            if cache is not None:
                layer = cache.layers[index]
                state = layer.state if layer.state is not None else block.initial_state(batch_size)
            if output_hidden_states:
                all_hidden.append(hidden)
            if output_attentions:
                # Before the block runs: a decoding step may write its key into the cached window in place.
                all_attentions.append(attention_weights(block, hidden, state, padding_mask))
            hidden, state = block(hidden, state, padding_mask)
            if cache is not None:
                layer.advance(state, length)
        hidden = self.norm(hidden)
        if output_hidden_states:
            all_hidden.append(hidden)

        output = BaseModelOutputWithPast(
            last_hidden_state=hidden,
            **{CACHE_ARGUMENT: cache if use_cache else None},
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None,
        )
        # Not transformers' can_return_tuple, as on the causal LM: a compiled forward would trace its one wrapper
        # around two functions and compile it again.
        return output if (return_dict if return_dict is not None else self.config.return_dict) else output.to_tuple()


def attention_weights(block, hidden, state, padding_mask):
    """The block's attention weights for `output_attentions` (None for a block without attention), computed apart
    from its forward with the random state set back after, so that asking for them leaves the forward's dropout, and
    so its output, as it would be."""
    if not hasattr(block, "attention_weights"):
        return None
    with torch.random.fork_rng(devices=[hidden.device] if hidden.device.type == "cuda" else []):
        return block.attention_weights(hidden, state, padding_mask)


def warn_of_blocks_without_attention(layers) -> None:
    kinds = sorted({kind for kind, block in BLOCKS.items()
                    if any(type(layer) is block for layer in layers) and not hasattr(block, "attention_weights")})
    if kinds:
        logger.warning_once(f"output_attentions: blocks of kind {', '.join(kinds)} do not return attention weights; "
                            f"their entries in `attentions` are None")


class LanguageModelHead(nn.Linear):
    """The output projection to the vocabulary. Given `targets`, it returns the cross-entropy of its logits against
    them instead of the logits, computed from its weight a chunk of positions at a time (ops.linear_cross_entropy),
    so that the (positions × vocabulary) logits and their gradient never exist. Either way it runs as a module call,
    so wrappers that gather a module's weights when it runs (DeepSpeed ZeRO-3) gather this one."""

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "sum"):
        if targets is None:
            return super().forward(hidden)
        return linear_cross_entropy(hidden, self.weight, targets, reduction=reduction)

    @classmethod
    def taking_over(cls, linear: nn.Linear) -> "LanguageModelHead":
        """A plain linear layer (what transformers' resize_token_embeddings makes) as this head: the same module,
        its parameters, hooks and init marks kept (post_init must not re-initialise resized weights); the head has
        no state of its own, only its forward."""
        linear.__class__ = cls
        return linear


class SSMLMForCausalLM(SSMLMPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: SSMLMConfig):
        super().__init__(config)
        self.model = SSMLMModel(config)
        self.lm_head = LanguageModelHead(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def set_output_embeddings(self, new_embeddings: nn.Linear):
        self.lm_head = new_embeddings if isinstance(new_embeddings, LanguageModelHead) else \
            LanguageModelHead.taking_over(new_embeddings)

    def prepare_inputs_for_generation(self, input_ids, **kwargs):
        """generate() prepares an empty transformers cache before the first step (a DynamicCache, which holds keys
        and values, not block states). Here it becomes an SSMLMCache, which the forward fills and returns, and which
        generate() passes back at every later step, as it does any model's returned cache."""
        cache = cache_argument(kwargs.pop("cache", None), kwargs.pop("past_key_values", None))
        if cache is not None and not isinstance(cache, SSMLMCache):
            if cache.get_seq_length() > 0:
                raise TypeError(f"generate() was given a {type(cache).__name__} that already holds tokens; an ssmlm "
                                f"model continues only from the SSMLMCache it returned")
            cache = SSMLMCache(len(self.model.layers))
        if cache is not None:
            kwargs[CACHE_ARGUMENT] = cache
        inputs = super().prepare_inputs_for_generation(input_ids, **kwargs)
        # A mask without padding says nothing to the blocks; dropped here, outside the forward, it leaves a
        # compiled forward no data-dependent branch to break its graph at.
        mask = inputs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and bool(mask.all()):
            del inputs["attention_mask"]
        return inputs

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: SSMLMCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: SSMLMCache | None = None,
        return_logits: bool = True,
        loss_per_position: bool = False,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """As any transformers causal LM: with `labels`, `loss` is the mean next-token cross-entropy (labels are
        shifted here; -100 marks positions without a loss; `num_items_in_batch`, as the Trainer passes it, divides
        the sum instead). `return_logits=False` with `labels` computes that loss with the fused linear
        cross-entropy (LanguageModelHead) and returns no logits (`logits` is None): the (tokens × vocabulary)
        logits and their gradient are never built, which at long lengths is most of a training step's time and
        memory. ssmlm's trainer does so; call with the default to have the logits. With `loss_per_position=True`
        as well, `loss` is each position's next-token loss, (batch, length), 0 where there is none (the last
        position, -100 labels), computed without gradients: ssmlm's validation and evaluation score with it. Either
        takes transformers' `shift_labels` (targets already shifted) in place of `labels`."""
        targets = kwargs.get("shift_labels")
        if not return_logits and labels is None and targets is None:
            raise ValueError("return_logits=False computes the loss without the logits: it needs labels")
        if loss_per_position and return_logits:
            raise ValueError("loss_per_position=True is for return_logits=False")
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            cache=cache_argument(cache, past_key_values),
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        hidden = outputs.last_hidden_state
        logits = loss = None
        if return_logits:
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = self.lm_head(hidden[:, keep, :])
            if labels is not None:
                loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        else:
            # transformers' causal-LM loss (ForCausalLMLoss) without its logits: targets are the labels shifted
            # left, the last position ignored.
            if targets is None:
                targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
            targets = targets.to(hidden.device)
            if loss_per_position:
                loss = self.lm_head(hidden, targets=targets, reduction="none")
            else:
                count = kwargs.get("num_items_in_batch")
                count = (targets != IGNORE_INDEX).sum() if count is None else count
                loss = self.lm_head(hidden, targets=targets) / count
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{CACHE_ARGUMENT: getattr(outputs, CACHE_ARGUMENT)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class SSMLMForSequenceClassification(GenericForSequenceClassification, SSMLMPreTrainedModel):
    """One label per sequence: transformers' generic head (Llama's), a linear map `score` of the final hidden state
    at the sequence's last token that is not padding. For a causal model that state has read the whole sequence;
    left or right padding gives the same label (padding is zeroed before the SSMs)."""

    def __init__(self, config: SSMLMConfig):
        # The backbone is built here, not by the generic head's AutoModel.from_config(config): that looks the
        # config's class up in AutoModel's registry, where the config class of a model loaded with
        # trust_remote_code (ssmlm_remote.SSMLMConfig, a subclass) is not, so it asked for trust_remote_code again.
        SSMLMPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.model = SSMLMModel(config)
        self.score = nn.Linear(config.hidden_size, self.num_labels, bias=False)
        self.post_init()


def next_token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The next-token loss (nats) at every position, in float32: logits (..., T, V) predict targets (..., T). Its mean
    over the positions is the `labels` loss of SSMLMForCausalLM (transformers' causal-LM loss, which shifts the
    labels itself); the trainer's validation and the evaluation score with this function."""
    return F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), reduction="none").view(targets.shape)


__all__ = ["LORA_TARGET_MODULES", "SSMLMPreTrainedModel", "SSMLMModel", "SSMLMForCausalLM",
           "SSMLMForSequenceClassification", "next_token_losses"]
