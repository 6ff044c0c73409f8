"""SaShiMi's backbone (ssmlm/model/blocks/sashimi.py) beyond the invariant suite it runs with every block: the pooled
path is causal and one pooled step late, a pooled level steps every p-th sample, rows that stand at different phases
(after a left-padded prefill) go on as each row alone, and its options are checked and saved as plain values."""

import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig

from invariants import decode_by_full_reforward, left_padded, tiny_config
from ssmlm import SSMLMForCausalLM
from ssmlm.model.blocks import build_block
from ssmlm.model.blocks.sashimi import Stage


def sashimi_config(pools, layers=1, **fields):
    return tiny_config(hidden_size=8, num_hidden_layers=1, block_types=["sashimi"], ssm_kernel="s4",
                       block_options={"sashimi": {"pools": pools, "layers": layers}}, **fields)


def sashimi_block(pools, layers=1):
    torch.manual_seed(0)
    return build_block("sashimi", sashimi_config(pools, layers)).double()


def test_an_output_depends_on_no_later_sample_and_the_pooled_path_is_one_group_late():
    """dy_t/dx_s = 0 for s > t; and the pooled path reaches the samples of a group from the groups before it only:
    the first group's outputs do not change with the UpPool's weights, every later one does."""
    block = sashimi_block([2, 3])
    x = torch.randn(1, 24, 8, dtype=torch.float64, requires_grad=True)
    y, _ = block(x)
    for t in (0, 1, 5, 11, 22):  # FFT convolutions leave rounding (~1e-16) where the exact gradient is 0
        (grad,) = torch.autograd.grad(y[0, t].sum(), x, retain_graph=True)
        assert grad[0, t + 1:].abs().max() < 1e-12 * grad[0, :t + 1].abs().max()
    stage = block.stage
    with torch.no_grad():  # the first group's outputs take nothing from the pooled path, the later ones do
        before, _ = block(x)
        stage.up.weight.mul_(2)
        stage.up.bias.add_(1)
        after, _ = block(x)
    assert torch.equal(before[0, :2], after[0, :2]) and (before[0, 2:] - after[0, 2:]).abs().min() > 0


def test_a_pooled_level_steps_every_pth_sample(monkeypatch):
    block = sashimi_block([4, 4])
    calls = {}
    forward = Stage.forward

    def counting(self, x, state=None):
        calls[self.width] = calls.get(self.width, 0) + 1
        return forward(self, x, state)

    monkeypatch.setattr(Stage, "forward", counting)
    state = block.initial_state(2)
    with torch.no_grad():
        for _ in range(32):
            _, state = block(torch.randn(2, 1, 8, dtype=torch.float64), state)
    assert calls == {8: 32, 16: 8, 32: 2}  # the outer level every sample, the next every 4th, the centre every 16th


def test_rows_at_different_phases_go_on_as_each_row_alone():
    """Left-padded prompts of 2 and 4 samples stand at the same outer phase (0 of 2) but different inner phases (1
    and 2 of 3): their single steps after the prefill equal each row run alone."""
    block = sashimi_block([2, 3])
    prompts = [torch.randn(2, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)]
    batch = torch.zeros(2, 4, 8, dtype=torch.float64)
    mask = torch.zeros(2, 4, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        batch[row, 4 - len(prompt):], mask[row, 4 - len(prompt):] = prompt, 1
    steps = torch.randn(2, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        _, state = block(batch, block.initial_state(2), mask)
        together = []
        for t in range(steps.shape[1]):
            y, state = block(steps[:, t:t + 1], state)
            together.append(y)
        together = torch.cat(together, dim=1)
        for row, prompt in enumerate(prompts):
            alone, _ = block(torch.cat([prompt, steps[row]]).unsqueeze(0))
            torch.testing.assert_close(together[row], alone[0, len(prompt):], rtol=0, atol=1e-12)


def test_left_padded_generation_equals_each_prompt_alone():
    torch.manual_seed(0)
    model = SSMLMForCausalLM(sashimi_config([2, 3], tie_word_embeddings=False)).eval()
    prompts = [torch.randint(3, 61, (n,)) for n in (2, 4, 7)]
    batch, mask = left_padded(prompts, model.config.pad_token_id)
    together = model.generate(batch, attention_mask=mask, max_new_tokens=9, do_sample=False, eos_token_id=None)
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt.unsqueeze(0), max_new_tokens=9, do_sample=False, eos_token_id=None)
        assert torch.equal(together[row, batch.shape[1] - len(prompt):], alone[0])
    assert torch.equal(model.generate(prompts[2].unsqueeze(0), max_new_tokens=9, do_sample=False),
                       decode_by_full_reforward(model, prompts[2].unsqueeze(0), 9))


def test_an_empty_chunk_changes_nothing():
    block = sashimi_block([2, 3])
    state = block.initial_state(1)
    y, after = block(torch.zeros(1, 0, 8, dtype=torch.float64), state)
    assert y.shape == (1, 0, 8) and after is state


def test_options_are_checked_by_name_and_saved_as_plain_lists(tmp_path):
    with pytest.raises(StrictDataclassError, match=r"block_options.sashimi: pools must be a list of positive ints"):
        sashimi_config([4, 0])
    with pytest.raises(StrictDataclassError, match=r"block_options.sashimi.pools expected Sequence"):
        sashimi_config(4)
    config = sashimi_config((4, 4))
    assert config.block_options["sashimi"]["pools"] == [4, 4]
    config.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).block_options == config.block_options
