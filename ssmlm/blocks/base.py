"""The base of every block: `y, state = block(x, state, padding_mask)`, and `initial_state(batch_size)`.

What the tests need of a block comes from its class: `EXAMPLE_CONFIGS`, small models with it that the invariant tests
(one pass == chunks == token by token, generation == re-running the prefix) run; a block that runs the config's
`ssm_kernel` is run with the registered kernels as well.
"""

from typing import ClassVar

from transformers.modeling_layers import GradientCheckpointingLayer


class Block(GradientCheckpointingLayer):
    # Named SSMLMConfig fields of the tests' small models with this block (block_types defaults to two of it).
    EXAMPLE_CONFIGS: ClassVar[dict[str, dict]] = {}
    # Whether the block runs the config's `ssm_kernel`: the tests then also run a model of it with each kernel of
    # EXAMPLE_KERNELS, named "<block kind>-<kernel>" (None: every registered kernel with EXAMPLE_MODEL_SETTINGS).
    RUNS_SSM_KERNEL: ClassVar[bool] = False
    EXAMPLE_KERNELS: ClassVar[tuple[str, ...] | None] = None

    def initial_state(self, batch_size: int):
        raise NotImplementedError

    def attention_shape(self):
        """(query/key width, value width, chunk or None) of a block's attention, for the benchmark's FLOPs; None
        for a block without attention."""
        return None
