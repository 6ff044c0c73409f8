"""The shape the code keeps (issue 29): the model library stands apart from the tools, no unit grows past what a
reader takes in at once, and the module lists kept by hand in package docstrings stay true. Checked over the package
and the scripts; the tests are tables and scenarios, left out."""

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
# What the model classes may load of ssmlm: the model library (configuration, modeling, cache, blocks, kernels, ops)
# and the compatibility layer. The tools (training, data, evaluation, benchmark, study, CLIs) import it, never the
# other way round.
MODEL_LIBRARY = ("ssmlm", "ssmlm.configuration", "ssmlm.modeling", "ssmlm.cache", "ssmlm.compat", "ssmlm.blocks",
                 "ssmlm.kernels", "ssmlm.ops")


def sources() -> list[Path]:
    return sorted([*(REPO / "ssmlm").rglob("*.py"), *(REPO / "scripts").rglob("*.py"), REPO / "train.py",
                   REPO / "generate.py"])


def listed_modules(package_init: Path) -> dict[str, str | None]:
    """The index in a package's docstring, its lines `    [ssmlm-COMMAND]  NAME.py  what it holds`, as {NAME.py: the
    console script, or None}."""
    docstring = ast.get_docstring(ast.parse(package_init.read_text()))
    listed = re.findall(r"^    (?:(ssmlm-[\w-]+) +)?(\w+\.py)  ", docstring, re.M)
    return {module: command or None for command, module in listed}


def test_the_package_indexes_name_every_module():
    """The hand-kept lists of ssmlm/benchmark/__init__.py and ssmlm/cli/__init__.py name every module of their folder
    and no other, and cli's pairs each console script with the module pyproject.toml runs."""
    benchmark = REPO / "ssmlm" / "benchmark"
    benchmark_modules = {path.name for path in benchmark.glob("*.py")} - {"__init__.py"}
    assert set(listed_modules(benchmark / "__init__.py")) == benchmark_modules
    cli = REPO / "ssmlm" / "cli"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    installed = {target.split(":")[0].removeprefix("ssmlm.cli.") + ".py": name for name, target in scripts.items()}
    assert listed_modules(cli / "__init__.py") == installed
    assert set(installed) == {path.name for path in cli.glob("*.py")} - {"__init__.py", "entry.py"}


def test_no_module_over_600_lines():
    long = {str(path.relative_to(REPO)): count for path in sources()
            if (count := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_over_80_lines():
    long = {}
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                count = node.end_lineno - node.lineno + 1
                if count > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(REPO)}:{node.lineno} {node.name}"] = count
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_model_classes_load_only_the_model_library():
    """A user's `from ssmlm import SSMLMForCausalLM`, a model built and run, in a process of its own: no module of
    the tools is imported, so the model library works, and is read, without them."""
    code = ("import sys, torch\n"
            "from ssmlm import SSMLMConfig, SSMLMForCausalLM\n"
            "model = SSMLMForCausalLM(SSMLMConfig(vocab_size=32, hidden_size=16, num_hidden_layers=2))\n"
            "model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, do_sample=False)\n"
            "print(*sorted(name for name in sys.modules if name.startswith('ssmlm')))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr
    loaded = run.stdout.split()
    outside = [name for name in loaded
               if not any(name == part or name.startswith(part + ".") for part in MODEL_LIBRARY[1:]) and name != "ssmlm"]
    assert "ssmlm.modeling" in loaded and not outside, outside
