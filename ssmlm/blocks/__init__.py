"""Blocks: the layers a model stacks, each `y, state = block(x, state, padding_mask)`.

BLOCKS is the one registry: the config's allowed `block_types`, the model's layer classes and its
`_no_split_modules` derive from it. A new block is one file plus its entry here (docs/kernels.md, "Adding a
kernel or a block").
"""

from .attention import AttentionBlock
from .gss import GSSBlock
from .h3 import H3Block
from .mega import MegaBlock
from .ssm import SSMBlock

BLOCKS = {
    "gss": GSSBlock,  # Gated State Space (Mehta et al. 2022)
    "mega": MegaBlock,  # Mega / Mega-chunk (Ma et al. 2022)
    "attention": AttentionBlock,  # the Transformer block of the GSS-Transformer hybrid and the baseline
    "ssm": SSMBlock,  # the plain S4 / DSS language-model layer
    "h3": H3Block,  # Hungry Hungry Hippos: shift and diagonal SSMs, multiplicative interactions
}

__all__ = ["BLOCKS", "AttentionBlock", "GSSBlock", "H3Block", "MegaBlock", "SSMBlock"]
