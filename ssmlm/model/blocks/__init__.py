"""Blocks: the layers a model stacks, each `y, state = block(x, state, padding_mask)`.

BLOCKS is the one registry: the config's allowed `block_types` and `block_options`, the model's layer classes and
its `_no_split_modules` derive from it; `build_block` builds one from the config. A new block is one file plus its entry here (docs/kernels.md, "Adding a
kernel or a block").
"""

from .attention import AttentionBlock
from .base import Block
from .gss import GSSBlock
from .h3 import H3Block
from .mega import MegaBlock
from .sashimi import SaShiMiBlock
from .ssm import SSMBlock

BLOCKS = {
    "gss": GSSBlock,  # Gated State Space (Mehta et al. 2022)
    "mega": MegaBlock,  # Mega / Mega-chunk (Ma et al. 2022)
    "attention": AttentionBlock,  # the Transformer block of the GSS-Transformer hybrid and the baseline
    "ssm": SSMBlock,  # the plain S4 / DSS language-model layer
    "h3": H3Block,  # Hungry Hungry Hippos: shift and diagonal SSMs, multiplicative interactions
    "sashimi": SaShiMiBlock,  # SaShiMi's multi-scale backbone (raw audio), the whole U-Net as one block
}



def build_block(kind: str, config) -> Block:
    """The block `kind` of a model with `config`, configured by the config's `block_options[kind]`."""
    return BLOCKS[kind](config, **config.block_options.get(kind, {}))


__all__ = ["BLOCKS", "Block", "build_block", "AttentionBlock", "GSSBlock", "H3Block", "MegaBlock", "SaShiMiBlock", "SSMBlock"]
