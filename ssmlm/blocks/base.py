"""The base of every block: `y, state = block(x, state, padding_mask)`, and `initial_state(batch_size)`."""

from transformers.modeling_layers import GradientCheckpointingLayer


class Block(GradientCheckpointingLayer):
    def initial_state(self, batch_size: int):
        raise NotImplementedError

    def attention_shape(self):
        """(query/key width, value width, chunk or None) of a block's attention, for the benchmark's FLOPs; None
        for a block without attention."""
        return None
