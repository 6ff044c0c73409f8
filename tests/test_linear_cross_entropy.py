"""The fused linear cross-entropy (ssmlm/model/ops/linear_cross_entropy.py): equal to the plain path (the logits, then
cross-entropy) in float64 for the loss and every gradient, close in float32 and bf16, and never holding the
(positions × vocabulary) logits."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from invariants import VOCAB_SIZE, tiny_config
from ssmlm import SSMLMForCausalLM
from ssmlm.model.ops import linear_cross_entropy as fused


@pytest.fixture
def small_chunks(monkeypatch):
    """7 positions a chunk, so that every test crosses chunk boundaries, one of them a partial chunk."""
    monkeypatch.setattr(fused, "CHUNK_ELEMENTS", 7 * VOCAB_SIZE)
    monkeypatch.setattr(fused, "MIN_CHUNK_POSITIONS", 1)


def inputs(dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 50, 16, dtype=dtype, generator=generator, requires_grad=True)
    weight = torch.randn(VOCAB_SIZE, 16, dtype=dtype, generator=generator, requires_grad=True)
    targets = torch.randint(0, VOCAB_SIZE, (3, 50), generator=generator)
    targets[0, :5] = targets[2, -1] = fused.IGNORE_INDEX
    return hidden, weight, targets


def plain(hidden, weight, targets, reduction):
    return F.cross_entropy((hidden @ weight.T).flatten(0, 1), targets.flatten(), reduction=reduction)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_the_summed_loss_and_its_gradients_equal_the_plain_path(dtype, tolerance, small_chunks):
    hidden, weight, targets = inputs(dtype)
    loss = fused.linear_cross_entropy(hidden, weight, targets)
    expected = plain(hidden, weight, targets, "sum")
    torch.testing.assert_close(loss, expected, rtol=tolerance, atol=0)
    # an upstream gradient other than 1 (a mean, a loss scale) scales both gradients
    got = torch.autograd.grad(loss * 0.37, (hidden, weight))
    want = torch.autograd.grad(expected * 0.37, (hidden, weight))
    for name, a, b in zip(("hidden", "weight"), got, want):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance, msg=name)
    assert got[0][0, :5].abs().max() == 0  # ignored positions get no gradient


def test_per_position_losses_equal_the_plain_path_and_refuse_gradients(small_chunks):
    hidden, weight, targets = inputs(torch.float64)
    with torch.no_grad():
        losses = fused.linear_cross_entropy(hidden, weight, targets, reduction="none")
        expected = plain(hidden, weight, targets, "none").view(targets.shape)
    torch.testing.assert_close(losses, expected, rtol=1e-13, atol=0)
    with pytest.raises(ValueError, match="per-position losses are computed without gradients"):
        fused.linear_cross_entropy(hidden, weight, targets, reduction="none")


def test_under_bf16_autocast_the_loss_is_the_plain_paths_within_bf16_precision(small_chunks):
    hidden, weight, targets = inputs(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fused.linear_cross_entropy(hidden, weight, targets)
        expected = F.cross_entropy(F.linear(hidden, weight).float().flatten(0, 1), targets.flatten(), reduction="sum")
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=0)
    got = torch.autograd.grad(loss, (hidden, weight))
    want = torch.autograd.grad(expected, (hidden, weight))
    for a, b in zip(got, want):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0.02, atol=0.02)


def whole_model_loss_and_gradients(model, ids, labels, **options):
    model.zero_grad()
    loss = model(input_ids=ids, labels=labels, use_cache=False, **options).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_the_model_loss_without_logits_equals_the_float64_cross_entropy_of_its_logits(small_chunks):
    """forward(labels, return_logits=False) against the cross-entropy of the model's own logits in float64
    (transformers' loss upcasts logits to float32 only), for the loss and the gradient of every parameter."""
    torch.manual_seed(0)
    model = SSMLMForCausalLM(tiny_config()).double().train()
    ids = torch.randint(3, VOCAB_SIZE, (2, 40))
    labels = ids.clone()
    labels[0, :7] = fused.IGNORE_INDEX  # e.g. a prompt left out of the loss
    loss, gradients = whole_model_loss_and_gradients(model, ids, labels, return_logits=False)

    model.zero_grad()
    logits = model(input_ids=ids, use_cache=False).logits
    expected = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
    expected.backward()
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-13, atol=0)
    assert gradients.keys() == {name for name, p in model.named_parameters() if p.grad is not None}
    for name, p in model.named_parameters():
        torch.testing.assert_close(gradients[name], p.grad, rtol=1e-10, atol=1e-13, msg=name)


def test_the_model_loss_without_logits_divides_by_the_trainers_item_count_and_returns_no_logits():
    torch.manual_seed(0)
    model = SSMLMForCausalLM(tiny_config()).train()
    ids = torch.randint(3, VOCAB_SIZE, (2, 12))
    with_logits = model(input_ids=ids, labels=ids, num_items_in_batch=torch.tensor(50))
    without = model(input_ids=ids, labels=ids, num_items_in_batch=torch.tensor(50), return_logits=False)
    assert without.logits is None and with_logits.logits.shape == (2, 12, VOCAB_SIZE)
    torch.testing.assert_close(without.loss, with_logits.loss, rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="return_logits=False computes the loss without the logits: it needs labels"):
        model(input_ids=ids, return_logits=False)


class LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an operation produced."""

    def __init__(self):
        super().__init__()
        self.most = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self.most = max(self.most, tensor.numel())
        return out


def test_a_chunk_holds_a_bounded_number_of_logits_and_at_least_its_minimum_of_positions():
    assert fused.positions_per_chunk(8192) * 8192 == fused.CHUNK_ELEMENTS  # a vocabulary dividing the chunk
    assert fused.positions_per_chunk(1) == fused.CHUNK_ELEMENTS
    assert fused.positions_per_chunk(10**6) == fused.MIN_CHUNK_POSITIONS  # a large vocabulary: the weight's traffic


@pytest.mark.parametrize("return_logits", [True, False])
def test_a_training_step_without_logits_never_holds_a_tensor_of_the_logits_size(return_logits, monkeypatch):
    """The point of the fused loss: no tensor of tokens × vocabulary in the forward or the backward (the plain
    path, as a check that this test sees them, has them). The vocabulary is larger than the model's widths, so that
    the logits are its largest tensors."""
    vocabulary = 1000
    monkeypatch.setattr(fused, "CHUNK_ELEMENTS", 16 * vocabulary)
    monkeypatch.setattr(fused, "MIN_CHUNK_POSITIONS", 1)
    model = SSMLMForCausalLM(tiny_config(vocab_size=vocabulary)).train()
    ids = torch.randint(3, VOCAB_SIZE, (2, 64))
    with LargestTensor() as largest:
        model(input_ids=ids, labels=ids, use_cache=False, return_logits=return_logits).loss.backward()
    logits_size = ids.numel() * vocabulary
    assert (largest.most >= logits_size) == return_logits, (largest.most, logits_size)


@pytest.mark.parametrize("tie_word_embeddings", [True, False])
def test_after_resize_token_embeddings_the_loss_without_logits_still_works(tie_word_embeddings):
    """transformers' resize_token_embeddings puts a plain nn.Linear in place of an untied head."""
    model = SSMLMForCausalLM(tiny_config(tie_word_embeddings=tie_word_embeddings)).train()
    model.resize_token_embeddings(VOCAB_SIZE + 5)
    assert type(model.lm_head).__name__ == "LanguageModelHead" and model.lm_head.weight.shape[0] == VOCAB_SIZE + 5
    ids = torch.randint(3, VOCAB_SIZE + 5, (2, 12))
    without = model(input_ids=ids, labels=ids, return_logits=False).loss
    torch.testing.assert_close(without, model(input_ids=ids, labels=ids).loss, rtol=1e-5, atol=0)
    without.backward()
    assert model.lm_head.weight.grad is not None
