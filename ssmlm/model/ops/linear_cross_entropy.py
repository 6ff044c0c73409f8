"""Next-token cross-entropy computed from the final hidden states and the output projection's weight, a chunk of
positions at a time, without ever holding the (positions × vocabulary) logits or their gradient: the approach of
Liger Kernel's fused linear cross-entropy and torchtune's chunked loss.

For a chunk of hidden states h (n × E) with targets y, the logits are z = h Wᵀ and the loss of position i is
−log softmax(z_i)[y_i]. The gradient of the summed loss with respect to z is softmax(z) − onehot(y) (zero on
ignored positions), so the gradients of h and W are (softmax − onehot) W and (softmax − onehot)ᵀ h. The summed loss
has a scalar upstream gradient, so these are computed in the forward pass, while the chunk's logits exist anyway,
and the backward pass only scales them: three products with W per position, as the plain path computes, and at
most one chunk's logits in memory instead of all of them, their log-softmax and its gradient.
"""

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # transformers' label for positions without a loss (padding, a sequence's last position)
# Logits per chunk (8 MiB in float32): small enough that a chunk's logits stay in the CPU's cache between the
# projection, the softmax and the two gradient products (docs/benchmarks.md compares chunk sizes). But at least
# MIN_CHUNK_POSITIONS positions a chunk: each chunk reads the output weight twice and adds into its whole gradient,
# which for a large vocabulary would otherwise cost more than the chunk's own logits.
CHUNK_ELEMENTS = 2**21
MIN_CHUNK_POSITIONS = 256


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """The softmax runs in float32 for half-precision logits (as transformers' loss upcasts them), else as given."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def chunk_losses(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int):
    """The log-probabilities of a chunk of positions in the loss's dtype, the positions kept, their losses (0 where
    ignored), and the dtype the output projection computed in (under autocast its precision, as the plain path's)."""
    logits = F.linear(hidden, weight)
    projection_dtype = logits.dtype
    log_probs = logits.to(loss_dtype(projection_dtype)).log_softmax(dim=1)  # one fused pass; logsumexp is several
    del logits
    kept = targets != ignore_index
    losses = -log_probs.gather(1, torch.where(kept, targets, 0)[:, None])[:, 0]
    return log_probs, kept, torch.where(kept, losses, 0), projection_dtype


def positions_per_chunk(vocabulary: int) -> int:
    return max(MIN_CHUNK_POSITIONS, CHUNK_ELEMENTS // vocabulary)


class SummedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index):
        flat_hidden, flat_targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden_chunks = []
        grad_weight = torch.zeros_like(weight) if want_weight else None
        total = None
        step = positions_per_chunk(len(weight))
        # torch.split, not a range over the length: under torch.compile that would pin the graph to one length.
        for chunk_hidden, chunk_targets in zip(flat_hidden.split(step), flat_targets.split(step)):
            log_probs, kept, losses, projection_dtype = chunk_losses(chunk_hidden, weight, chunk_targets,
                                                                     ignore_index)
            total = losses.sum() if total is None else total + losses.sum()
            if want_hidden or want_weight:
                # d loss / d logits, in place of the log-probabilities: softmax − onehot on kept positions, 0
                # elsewhere; then the projection's backward in the precision its forward ran in.
                grad_logits = log_probs.exp_()
                kept_column = kept[:, None].to(grad_logits.dtype)
                grad_logits.scatter_add_(1, torch.where(kept, chunk_targets, 0)[:, None], -kept_column)
                grad_logits.mul_(kept_column)  # always: a branch on the data would break a compiled graph
                grad_logits = grad_logits.to(projection_dtype)
                if want_hidden:
                    grad_hidden_chunks.append(grad_logits @ weight.to(projection_dtype))
                if want_weight and projection_dtype == grad_weight.dtype:
                    grad_weight.addmm_(grad_logits.T, chunk_hidden)
                elif want_weight:  # under autocast: the product in its precision, summed in the weight's
                    grad_weight += grad_logits.T @ chunk_hidden.to(projection_dtype)
        if total is None:  # no positions
            total = flat_hidden.new_zeros((), dtype=loss_dtype(flat_hidden.dtype))
        grad_hidden = torch.cat(grad_hidden_chunks).to(hidden.dtype) if want_hidden else None
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.hidden_shape = hidden.shape
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = (grad_hidden * grad_total.to(grad_hidden.dtype)).view(ctx.hidden_shape)
        if grad_weight is not None:
            grad_weight = grad_weight * grad_total.to(grad_weight.dtype)
        return grad_hidden, grad_weight, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         ignore_index: int = IGNORE_INDEX, reduction: str = "sum") -> torch.Tensor:
    """The cross-entropy of the logits `hidden @ weight.T` (hidden (..., E), weight (V, E)) against `targets`
    (...), positions equal to `ignore_index` left out, without building the logits. reduction "sum": the summed
    loss, differentiable; "none": each position's loss, (...) (0 where ignored), computed without gradients (for
    evaluation). A mean is the sum over the number of kept positions."""
    if reduction == "sum":
        return SummedLinearCrossEntropy.apply(hidden, weight, targets, ignore_index)
    if reduction != "none":
        raise ValueError(f"reduction must be 'sum' or 'none', got {reduction!r}")
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        raise ValueError("per-position losses are computed without gradients; for a loss to train on, use "
                         "reduction='sum'")
    flat_hidden, flat_targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    step = positions_per_chunk(len(weight))
    losses = [chunk_losses(chunk_hidden, weight, chunk_targets, ignore_index)[2]
              for chunk_hidden, chunk_targets in zip(flat_hidden.split(step), flat_targets.split(step))]
    return torch.cat(losses).view(targets.shape)
