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
# What the model classes may load of ssmlm: the model library, one folder. The tools (training, data, evaluation,
# benchmark, study, CLIs) import it, never the other way round.
MODEL_LIBRARY = "ssmlm.model"


def outside_the_model_library(module: str) -> bool:
    return module not in ("ssmlm", MODEL_LIBRARY) and not module.startswith(MODEL_LIBRARY + ".")


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
    outside = [name for name in loaded if outside_the_model_library(name)]
    assert "ssmlm.model.modeling" in loaded and not outside, outside


def readme_layout() -> dict[str, set[str]]:
    """The modules README's Layout section names, by folder. A line indented by two spaces is the package's top
    level: its first `folder/` is a folder of the package, a later one a folder inside it; a continuation line
    (indented further) goes on in the folder of the line above, and may open a folder inside the top-level one."""
    block = (REPO / "README.md").read_text().split("## Layout", 1)[1].split("```", 2)[1]
    listed, parent, folder = {}, "", ""
    for line in block.splitlines():
        if not line.startswith("  "):  # the block's first and last lines: the package and the checkout
            continue
        if not line.startswith("   "):
            parent = folder = ""
        for word in line.split():
            word = word.rstrip(":,;")
            if word.endswith("/") and word[:-1].isidentifier():
                if not parent:
                    parent = folder = word[:-1]
                else:
                    folder = f"{parent}/{word[:-1]}"
            elif word.endswith(".py") and word != "__init__.py":
                listed.setdefault(folder, set()).add(word)
    return listed


def test_the_readme_layout_is_the_tree_as_it_is():
    """Every module of the package is named in README's Layout, in its folder, and every module named there exists
    (package __init__.py files, which hold the registries and re-exports, aside)."""
    package = REPO / "ssmlm"
    actual = {}
    for path in package.rglob("*.py"):
        if path.name != "__init__.py" and "__pycache__" not in path.parts:
            actual.setdefault(path.parent.relative_to(package).as_posix().removeprefix("."), set()).add(path.name)
    listed = readme_layout()
    missing = {folder: sorted(names - listed.get(folder, set())) for folder, names in actual.items()
               if names - listed.get(folder, set())}
    absent = {folder: sorted(names - actual.get(folder, set())) for folder, names in listed.items()
              if names - actual.get(folder, set())}
    assert not missing and not absent, f"not in README's Layout: {missing}; named there but absent: {absent}"


def test_no_module_of_the_package_reaches_out_of_it():
    """An installed ssmlm has no checkout around it: no module finds files by climbing out of its own folder."""
    climbing = [f"{path.relative_to(REPO)}: {line.strip()}" for path in (REPO / "ssmlm").rglob("*.py")
                for line in path.read_text().splitlines()
                if "__file__" in line and (".parents[" in line or ".parent.parent" in line)]
    assert not climbing, climbing


def imported_modules(path: Path) -> set[str]:
    """The ssmlm modules a file imports, anywhere in it (inside functions too), as absolute names."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.split(".")[0] == "ssmlm"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            if base.split(".")[0] == "ssmlm":
                names |= {base} if node.module else {f"{base}.{alias.name}" for alias in node.names}
    return names


def test_the_model_library_imports_no_tool():
    """Every import statement of the model library's modules, those run lazily inside functions too, stays in it."""
    files = sorted((REPO / MODEL_LIBRARY.replace(".", "/")).glob("**/*.py"))
    outside = {f"{path.relative_to(REPO)}: {name}" for path in files for name in imported_modules(path)
               if outside_the_model_library(name)}
    assert files and not outside, sorted(outside)
