"""ssmlm uses transformers' public API: of transformers' `_`-prefixed names it sets or reads only those that
transformers' own Llama and Mamba models set in the installed release (`_no_split_modules`, `_init_weights`,
`_supports_sdpa`, ...). A private hook is what broke generation between two minor releases; this keeps it out. Also:
the supported range is declared, and a transformers outside it is refused or warned about at import."""

import ast
import importlib
import inspect
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
import transformers
from torch import nn
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.modeling_layers import GradientCheckpointingLayer

import ssmlm
from ssmlm.model import compat

pytestmark = pytest.mark.hf

PACKAGE = Path(ssmlm.__file__).parent
ROOT = PACKAGE.parent
TRANSFORMERS_BASES = (PreTrainedModel, GenerationMixin, PreTrainedConfig, Cache, CacheLayerMixin,
                      GradientCheckpointingLayer)


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def transformers_private_names() -> set[str]:
    """`_`-names of the transformers classes ssmlm subclasses, less those torch's nn.Module and object have."""
    names = {name for base in TRANSFORMERS_BASES for klass in base.__mro__ for name in vars(klass) if private(name)}
    return names - {name for klass in (nn.Module, object) for name in dir(klass)}


def allowed_names() -> set[str]:
    """What transformers' Llama, Mamba and Mamba2 classes (models and configs) set of those names, in this release."""
    names = set()
    for model in ("llama", "mamba", "mamba2"):
        for suffix in ("modeling", "configuration"):
            module = importlib.import_module(f"transformers.models.{model}.{suffix}_{model}")
            for _, klass in inspect.getmembers(module, inspect.isclass):
                if klass.__module__ == module.__name__:
                    names |= {name for name in vars(klass) if private(name)}
    return names


def referenced_private_attributes() -> dict[str, set[str]]:
    """Every `x._name` read or written, every `_name` defined in a class body, and every `_name` imported, in the
    package's source: {name: files}."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Attribute):
                names = [node.attr]
            elif isinstance(node, ast.ClassDef):
                for statement in node.body:
                    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        names.append(statement.name)
                    elif isinstance(statement, ast.Assign):
                        names += [target.id for target in statement.targets if isinstance(target, ast.Name)]
                    elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                        names.append(statement.target.id)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("transformers"):
                names = [alias.name for alias in node.names]
            for name in names:
                if private(name):
                    found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def test_no_private_transformers_name_beyond_those_llama_and_mamba_set():
    transformers_private = transformers_private_names()
    allowed = allowed_names()
    used = {name: files for name, files in referenced_private_attributes().items() if name in transformers_private}
    beyond = {name: sorted(files) for name, files in used.items() if name not in allowed}
    assert not beyond, f"transformers {transformers.__version__}: private names beyond Llama's and Mamba's: {beyond}"
    assert {"_no_split_modules", "_init_weights", "_supports_sdpa"} <= set(used)  # the check sees what it should


def test_no_private_transformers_name_is_imported():
    imported = [(node.module, alias.name) for path in PACKAGE.rglob("*.py")
                for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("transformers")
                for alias in node.names if alias.name.startswith("_")]
    assert not imported


def test_pyproject_declares_the_tested_range_not_a_pin():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (transformers_requirement,) = [d for d in dependencies if re.match(r"transformers\b", d)]
    floor = compat.OLDEST_SUPPORTED.removesuffix(".0")
    assert transformers_requirement == f"transformers>={floor},<6"
    assert all(">=" in d for d in dependencies)  # every dependency has a floor: the oldest venv installs them


def run_import_with_transformers_version(version: str) -> subprocess.CompletedProcess:
    """`import ssmlm` in a fresh process whose transformers reports `version`."""
    code = f"import transformers; transformers.__version__ = {version!r}; import ssmlm; print('imported')"
    return subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_a_transformers_below_the_floor_is_refused_at_import_in_one_line():
    run = run_import_with_transformers_version("5.16.1")
    assert run.returncode != 0
    assert run.stderr.strip().splitlines()[-1] == (
        f"ssmlm.model.compat.UnsupportedTransformersError: ssmlm needs transformers >= {compat.OLDEST_SUPPORTED}, but "
        f"5.16.1 is installed: pip install 'transformers>={compat.OLDEST_SUPPORTED},<6'")


@pytest.mark.slow
def test_a_transformers_newer_than_the_tested_range_warns_once_and_imports():
    run = run_import_with_transformers_version("5.99.0")
    assert run.returncode == 0 and run.stdout.strip() == "imported"
    warnings = [line for line in run.stderr.splitlines() if "ssmlm is tested with transformers" in line]
    assert len(warnings) == 1 and compat.NEWEST_TESTED in warnings[0] and "5.99.0" in warnings[0]


def test_a_cache_passed_under_both_names_is_refused():
    model = ssmlm.SSMLMForCausalLM(ssmlm.SSMLMConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1))
    first = model(torch.tensor([[1, 2]]), use_cache=True)
    cache = getattr(first, compat.CACHE_ARGUMENT)
    with pytest.raises(ValueError, match="pass the cache once"):
        model(torch.tensor([[3]]), cache=cache, past_key_values=cache)
    for name in ("cache", "past_key_values"):  # either name continues the sequence
        torch.testing.assert_close(model(torch.tensor([[3]]), **{name: getattr(model(torch.tensor([[1, 2]]),
                                   use_cache=True), compat.CACHE_ARGUMENT)}).logits,
                                   model(torch.tensor([[1, 2, 3]])).logits[:, -1:])
