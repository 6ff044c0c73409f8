"""The base of every block: `y, state = block(x, state, padding_mask)`, and `initial_state(batch_size)`.

A block is built from the config and its own options, `Block(config, **options)`: the options are its
constructor's keyword arguments after the config, declared as a kernel's are (options.py), given in the config as
`block_options[kind]` and checked there by the block's `check_options(options, config)`. What every block reads
from the config itself (hidden_size, intermediate_size, layer_norm_eps, hidden_dropout, initializer_range, and for
the SSM blocks the ssm_* fields) is what the model has once.

What the tests need of a block comes from its class: `EXAMPLE_CONFIGS`, small models with it that the invariant tests
(one pass == chunks == token by token, generation == re-running the prefix) run; a block that runs the config's
`ssm_kernel` is run with the registered kernels as well.
"""

from typing import ClassVar

from transformers.modeling_layers import GradientCheckpointingLayer

from ..options import DeclaredOptions


class Block(GradientCheckpointingLayer, DeclaredOptions):
    LEADING_ARGUMENTS = 1  # the config
    # Named SSMLMConfig fields of the tests' small models with this block (block_types defaults to two of it).
    EXAMPLE_CONFIGS: ClassVar[dict[str, dict]] = {}
    # Whether the block runs the config's `ssm_kernel`: the tests then also run a model of it with each kernel of
    # EXAMPLE_KERNELS, named "<block kind>-<kernel>" (None: every registered kernel with EXAMPLE_MODEL_SETTINGS).
    RUNS_SSM_KERNEL: ClassVar[bool] = False
    EXAMPLE_KERNELS: ClassVar[tuple[str, ...] | None] = None
    # Config fields every small test model of this block takes besides its kind (its kernel examples, the
    # integration tests' and transformers' common tests' models): for a block whose defaults are large.
    EXAMPLE_SETTINGS: ClassVar[dict] = {}
    # Whether the decoding step traces as one graph under torch.compile; False for a block whose step branches on
    # its state (the docstring says why), which compiles with graph breaks.
    STEP_COMPILES_WHOLE: ClassVar[bool] = True

    @classmethod
    def check_options(cls, options: dict, config) -> None:
        """Raise ValueError for option values (every one, the defaults filled in) that cannot work together or with
        the config."""

    def initial_state(self, batch_size: int):
        raise NotImplementedError

    def attention_shape(self):
        """(query/key width, value width, chunk or None) of a block's attention, for the benchmark's FLOPs; None
        for a block without attention."""
        return None
