"""A new kernel is one class plus its registry entry, and a new block the same: everything the tests need of them
comes from the classes. Shown here with a toy kernel (a 2-tap causal filter) and a toy block (a kernel between two
linear layers), registered inside the test: they get the whole invariant suite of test_ssm_kernels.py and
test_model_recurrence.py, and a kernel without a reference, or a block without an example, fails it by name."""

import inspect

import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from torch import nn

import test_model_recurrence
import test_ssm_kernels
from invariants import model_examples, tiny_config
from ssmlm import SSMLMForCausalLM
from ssmlm.model.blocks import BLOCKS
from ssmlm.model.blocks.base import Block
from ssmlm.model.kernels import KERNELS, build_ssm
from ssmlm.model.kernels.reference import finite_filter
from ssmlm.model.kernels.window import WindowConv


class TwoTapFilterWithoutReference(WindowConv):
    """y_t = c_0 u_t + c_1 u_{t-1} + D u_t per channel: a window kernel whose state is the last input (window.py
    does the three modes). It ignores the state size it is given."""

    BOUNDARY_LENGTHS = (2, 3)  # at and past its two taps

    def __init__(self, channels: int, state_size: int):
        super().__init__(channels, state_size)
        self.kernel_length = 2
        self.C = nn.Parameter(torch.empty(channels, 2))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        nn.init.normal_(self.C, std=0.5)
        nn.init.ones_(self.D)

    def taps(self) -> torch.Tensor:
        return self.C.to(self.compute_dtype())


class TwoTapFilter(TwoTapFilterWithoutReference):
    def reference(self, u):
        """The filter's definition, tap by tap: y_t = Σ_{j<2} C_j u_{t-j} + D u_t."""
        return finite_filter(self.C, self.D, u)


class FilterBlock(Block):
    """x + s · W_out SSM(W_in x): the config's kernel between two linear layers, the least a block needs, and one
    option of its own, the residual branch's scale s."""

    RUNS_SSM_KERNEL = True
    EXAMPLE_KERNELS = ("toy-fir", "dss")
    OPTIONS = {"residual_scale": float}

    def __init__(self, config, residual_scale: float = 1.0):
        super().__init__()
        self.residual_scale = residual_scale
        self.to_ssm = nn.Linear(config.hidden_size, config.ssm_size)
        self.ssm = build_ssm(config.ssm_kernel, config.ssm_size, config.ssm_state_size, config.ssm_kernel_options)
        self.to_out = nn.Linear(config.ssm_size, config.hidden_size)

    def initial_state(self, batch_size: int):
        return self.ssm.initial_state(batch_size)

    def forward(self, x, state=None, padding_mask=None):
        u = self.to_ssm(x)
        if padding_mask is not None:  # padded positions must not enter the state
            u = u * padding_mask.unsqueeze(-1).to(u.dtype)
        y, state = self.ssm(u, state)
        return x + self.residual_scale * self.to_out(y), state

    @classmethod
    def check_options(cls, options, config):
        if options["residual_scale"] <= 0:
            raise ValueError(f"residual_scale must be positive, got {options['residual_scale']}")


class BlockWithoutExamples(FilterBlock):
    RUNS_SSM_KERNEL = False


@pytest.fixture
def toys_registered(monkeypatch):
    """The toy kernel and block registered as a new kernel's and block's files would register them: one registry
    entry each, nothing else."""
    monkeypatch.setitem(KERNELS, "toy-fir", TwoTapFilter)
    monkeypatch.setitem(BLOCKS, "toy", FilterBlock)


def run_with_every_dtype(invariant, **arguments):
    """An invariant test called directly, with each dtype it is parametrized over where it takes one."""
    if "dtype" not in inspect.signature(invariant).parameters:
        return invariant(**arguments)
    for dtype in (torch.float64, torch.float32):
        invariant(**arguments, dtype=dtype)


def parametrized_over(module, values: list) -> set:
    """The tests of `module` that pytest parametrizes over the list `values`."""
    return {test for name, test in vars(module).items() if name.startswith("test_")
            for mark in getattr(test, "pytestmark", []) if mark.name == "parametrize" and mark.args[1] is values}


def test_the_suites_hold_every_test_over_the_registered_kernels_and_models():
    """A test added over every kernel (or example model) is in the suite a new one gets."""
    assert parametrized_over(test_ssm_kernels, test_ssm_kernels.CASES) == set(test_ssm_kernels.KERNEL_INVARIANTS)
    assert parametrized_over(test_model_recurrence, test_model_recurrence.MODELS) == set(
        test_model_recurrence.MODEL_INVARIANTS)


@pytest.mark.parametrize("invariant", test_ssm_kernels.KERNEL_INVARIANTS, ids=lambda test: test.__name__)
def test_a_registered_kernel_gets_every_kernel_invariant(toys_registered, invariant):
    """One pass == chunks == steps in float64 and float32, its reference, causality, gradients to every parameter,
    a bounded state, ... for each of its example options."""
    for options in KERNELS["toy-fir"].EXAMPLE_OPTIONS:
        run_with_every_dtype(invariant, kind="toy-fir", options=options)


def test_registered_kinds_are_in_example_models(toys_registered):
    """GSS runs the new kernel; the new block runs its example kernels: models the config accepts as they are."""
    toys = {name for name, example in model_examples().items()
            if "toy" in example["block_types"] or example.get("ssm_kernel") == "toy-fir"}
    assert toys == {"gss-toy-fir", "toy-toy-fir", "toy-dss"}
    test_model_recurrence.test_every_block_kind_and_kernel_is_in_a_model_here()


@pytest.mark.parametrize("invariant", test_model_recurrence.MODEL_INVARIANTS, ids=lambda test: test.__name__)
@pytest.mark.parametrize("name", ["gss-toy-fir", "toy-toy-fir", "toy-dss"])
def test_a_registered_block_gets_every_model_invariant(toys_registered, invariant, name):
    """The block and the whole model: one pass == chunks == tokens in float64 and float32; generate() with the
    cache == re-running the prefix."""
    run_with_every_dtype(invariant, name=name)


def test_a_registered_blocks_options_are_declared_checked_and_built(toys_registered):
    """The block's options come from its constructor alone: the config takes, checks and names them, and the model
    builds the block with them."""
    config = tiny_config(block_types=["toy", "gss"], block_options={"toy": {"residual_scale": 0.5}})
    assert config.block_options_of("toy") == {"residual_scale": 0.5}
    assert SSMLMForCausalLM(config).model.layers[0].residual_scale == 0.5
    assert tiny_config(block_types=["toy", "toy"]).block_options_of("toy") == {"residual_scale": 1.0}
    for options, message in [({"residual_scal": 2.0}, r"block_options.toy.residual_scal: FilterBlock has no such "
                                                       r"option \(did you mean 'residual_scale'\?\)"),
                             ({"residual_scale": "big"}, r"block_options.toy.residual_scale expected float"),
                             ({"residual_scale": -1.0}, r"block_options.toy: residual_scale must be positive")]:
        with pytest.raises(StrictDataclassError, match=message):
            tiny_config(block_types=["toy", "toy"], block_options={"toy": options})


def test_a_kernel_without_a_reference_fails_the_suite_by_name(monkeypatch):
    monkeypatch.setitem(KERNELS, "toy-unchecked", TwoTapFilterWithoutReference)
    with pytest.raises(AssertionError, match="kernels without a reference.*toy-unchecked"):
        test_ssm_kernels.test_every_registered_kernel_has_a_reference()
    with pytest.raises(NotImplementedError, match="TwoTapFilterWithoutReference has no reference"):
        test_ssm_kernels.test_each_kernel_is_its_papers_formula(kind="toy-unchecked", options={})


def test_a_block_without_examples_fails_the_suite_by_name(monkeypatch):
    monkeypatch.setitem(BLOCKS, "toy-untested", BlockWithoutExamples)
    with pytest.raises(AssertionError, match="block kinds in no example model.*toy-untested"):
        test_model_recurrence.test_every_block_kind_and_kernel_is_in_a_model_here()
