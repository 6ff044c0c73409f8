"""A kernel's or a block's option defaults are written once, in its `__init__` signature (issue 29): its `OPTIONS` name
the same options, and docs/kernels.md's tables "The kernels and their options" and "The blocks and their options"
give the same names and defaults."""

import re
from pathlib import Path

import pytest

from invariants import tiny_config
from ssmlm.model.blocks import BLOCKS
from ssmlm.model.kernels import KERNELS

KERNELS_DOC = Path(__file__).resolve().parents[1] / "docs" / "kernels.md"
# Defaults computed from other values, None in the signature: the table describes them in words (its first clause
# is pinned here), and the code that computes them is named in the kernel's docstring.
COMPUTED_DEFAULTS = {
    ("dss-softmax", "normalization_length"): "required",  # train.py sets the training length
    ("sgconv", "kernel_length"): "required",  # train.py sets the training length
    ("s5", "blocks"): "8",  # s5.default_blocks, from the state size
    ("mega", "z_dim"): "E/4",  # MegaBlock.widths, from the hidden size
    ("mega", "v_dim"): "2E",
    ("mega", "chunk_size"): "null",  # full attention
    ("attention", "window"): "null",  # needed by the local spans only
}
# Each table of docs/kernels.md and the registry its rows name.
TABLES = {"The kernels and their options": KERNELS, "The blocks and their options": BLOCKS}
DECLARED = [(kind, registry[kind]) for registry in TABLES.values() for kind in registry]
# An option in the table: `name` (default, then any words), the default up to the first comma, semicolon or ")"
# outside brackets (a list default is written [4, 4]).
DOCUMENTED_OPTION = re.compile(r"`(\w+)` \(((?:\[[^\]]*\]|[^,;)])*)")


def documented_options(title: str) -> dict[str, dict[str, str]]:
    """{kind: {option: its default as written}} from the options column of docs/kernels.md's table `title`."""
    section = KERNELS_DOC.read_text().split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    rows = section.split("|---|", 1)[1]  # past the header
    table = {}
    for row in re.findall(r"^\| `([\w-]+)` \|(.*)\|$", rows, re.M):
        kind, cells = row
        options_cell = cells.split("|")[1]
        table[kind] = {name: default.strip().strip("`") for name, default in DOCUMENTED_OPTION.findall(options_cell)}
    return table


def documented(kind: str, declared: type) -> dict[str, str]:
    title = next(title for title, registry in TABLES.items() if registry.get(kind) is declared)
    return documented_options(title)[kind]


def documents(text: str, default) -> bool:
    """Whether `text`, a default as the table writes it (1e-3, 0.1, true, inv), is the value `default`."""
    if isinstance(default, (list, tuple)):
        return text == str(list(default))
    if isinstance(default, bool):
        return text == str(default).lower()
    if isinstance(default, str):
        return text == default
    try:
        return float(text) == default and (isinstance(default, float) or text.isdigit())
    except ValueError:
        return False


@pytest.mark.parametrize("title", list(TABLES))
def test_every_registered_kernel_and_block_has_a_row(title):
    assert set(documented_options(title)) == set(TABLES[title])


@pytest.mark.parametrize(("kind", "declared"), DECLARED, ids=[f"{declared.__name__}" for _, declared in DECLARED])
def test_options_are_the_signatures_keyword_arguments(kind, declared):
    """OPTIONS (what each option may be) and __init__ (where its default is written) name the same options, and
    each default is one of its choices or of its type; None only where it is computed elsewhere."""
    defaults = declared.option_defaults()
    assert set(declared.OPTIONS) == set(defaults), f"{kind}: OPTIONS and __init__'s keyword arguments differ"
    for name, default in defaults.items():
        expected = declared.OPTIONS[name]
        if default is None:
            assert (kind, name) in COMPUTED_DEFAULTS, f"{kind}.{name}: a default of None that nothing computes"
        elif isinstance(expected, tuple):
            assert default in expected, f"{kind}.{name}: default {default!r} is not one of its choices"
        else:
            assert isinstance(default, expected), f"{kind}.{name}: default {default!r} is not {expected.__name__}"


@pytest.mark.parametrize(("kind", "declared"), DECLARED, ids=[f"{declared.__name__}" for _, declared in DECLARED])
def test_the_docs_table_gives_each_option_and_its_default(kind, declared):
    written = documented(kind, declared)
    defaults = declared.option_defaults()
    assert set(written) == set(defaults), (
        f"docs/kernels.md's row for {kind} names options {sorted(written)}; the kernel takes {sorted(defaults)}")
    for name, default in defaults.items():
        if (kind, name) in COMPUTED_DEFAULTS:
            assert default is None and written[name] == COMPUTED_DEFAULTS[kind, name], (kind, name, written[name])
        else:
            assert documents(written[name], default), (
                f"docs/kernels.md gives {kind}'s {name} the default {written[name]!r}; its signature says {default!r}")


def test_the_defaults_are_read_once_per_class():
    kernel = KERNELS["s4d"]
    assert kernel.option_defaults() is kernel.option_defaults()


def test_a_changed_signature_default_is_what_validation_checks():
    """The checks read the signature: a subclass that moves dt_max's default below dt_min's is refused without
    being passed either."""
    from ssmlm.model.kernels import S4DKernel

    class NarrowS4D(S4DKernel):
        def __init__(self, channels, modes, init="inv", discretization="zoh", dt_min=1e-3, dt_max=1e-4):
            super().__init__(channels, modes, init, discretization, dt_min, dt_max)

    with pytest.raises(ValueError, match=r"options: dt_min and dt_max must satisfy .* got 0.001 and 0.0001"):
        NarrowS4D.validate_options({})
    S4DKernel.validate_options({})


@pytest.mark.parametrize(("kind", "name"), sorted(COMPUTED_DEFAULTS))
def test_an_option_left_at_none_is_filled_or_refused_by_name(kind, name):
    """None is accepted wherever the default is None (one filled elsewhere): the class then fills it, or its check
    says which option it needs."""
    declared = KERNELS.get(kind) or BLOCKS[kind]
    context = () if kind in KERNELS else (tiny_config(),)
    try:
        declared.validate_options({name: None}, "options", *context)
    except ValueError as error:
        assert name in str(error), error
