"""The bounded key/value cache of local attention (sliding and chunked spans, attention.py) and of Mega-chunk
(mega.py): w slots per row, the token at position p in slot p mod w. The latest w tokens of a row always fall in
distinct slots, so after any call the cache holds exactly them, and a decoding step writes its token over the
token w positions back, which no span can reach any more: in place, with no copy of the cache. Positions count a
row's real tokens (left padding takes none), so a padded prompt fills its slots as it would alone."""

import torch


def keep_latest(tensors: list[torch.Tensor], positions: torch.Tensor, window: int,
                dim: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Of `tensors` (keys, values, ...) laid along `dim` with their tokens' `positions` (batch, n; -1: no token),
    the `window` slots of each row: its latest `window` real tokens, token p at slot p mod `window`; a slot
    without a token holds zeros and position -1. Returns the slotted tensors and the slots' positions."""
    newest = positions.max(dim=1, keepdim=True).values
    kept = (positions >= 0) & (positions > newest - window)
    slot = torch.where(kept, positions % window, window)  # the others go to one extra slot, dropped below
    slot_positions = positions.new_full((positions.shape[0], window + 1), -1)
    slot_positions = slot_positions.scatter(1, slot, torch.where(kept, positions, -1))[:, :window]
    slotted = []
    for tensor in tensors:
        shape = [1] * tensor.dim()
        shape[0], shape[dim] = slot.shape[0], slot.shape[1]
        index = slot.view(shape).expand(*tensor.shape)
        size = list(tensor.shape)
        size[dim] = window + 1
        slotted.append(tensor.new_zeros(size).scatter(dim, index, tensor).narrow(dim, 0, window))
    return slotted, slot_positions


def write_token(buffer: torch.Tensor, token: torch.Tensor, slot: torch.Tensor, dim: int) -> None:
    """A decoding step: each row's one new `token` (size 1 along `dim`) written in place into `buffer` at its
    `slot` (batch,). Only without autograd: generate() runs so, and an in-place write would break a graph."""
    shape = [1] * buffer.dim()
    shape[0] = slot.shape[0]
    buffer.scatter_(dim, slot.view(shape).expand(*token.shape), token.to(buffer.dtype))
