"""pip-installed use: a wheel built from the sources holds the package, its shipped configs and its console
scripts; installed into a fresh venv and run outside any checkout, `ssmlm-train --config gss-small` trains,
`ssmlm-generate` generates, and every command and `python -m ssmlm.cli.NAME` form answers --help.

The fresh venv gets only the wheel (no dependencies, no index): the dependencies already installed for the tests
are put on its path with a .pth file, so nothing is downloaded and the ssmlm it imports is the wheel's."""

import argparse
import importlib
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from ssmlm.cli import bench
from ssmlm.training.config import ConfigError, config_path, load_config, shipped_config_names

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("train", "generate", "eval-length", "bench", "build-corpus", "study")


def test_a_shipped_config_is_addressed_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert "gss-small" in shipped_config_names() and "gss-hybrid-small" in shipped_config_names()
    shipped = REPO / "ssmlm" / "configs" / "gss-small.yaml"
    assert config_path("gss-small") == shipped and config_path("gss-small.yaml") == shipped
    assert load_config("gss-hybrid-small").model["block_types"][-1] == "attention"  # its `extends:` found too
    (tmp_path / "gss-small.yaml").write_text("training:\n  max_steps: 7\n")  # a file as given wins over the name
    assert config_path("gss-small.yaml") == Path("gss-small.yaml") and config_path("gss-small") == shipped
    with pytest.raises(ConfigError, match=r"^config file not found: gss-smal; the shipped configs are .*gss-small"):
        config_path("gss-smal")
    with pytest.raises(ConfigError, match=r"^config file not found: sub/gss-small$"):
        config_path("sub/gss-small")
    (tmp_path / "experiments").mkdir()
    with pytest.raises(ConfigError, match=r"^config file experiments is a directory; give a YAML file"):
        config_path("experiments")


def test_the_checkout_configs_folder_is_the_shipped_one():
    """configs/ in a checkout is a link to the package data, not a second copy."""
    assert (REPO / "configs").resolve() == (REPO / "ssmlm" / "configs").resolve()


# Each command's module, and the program name its messages give.
COMMAND_MODULES = {f"ssmlm.cli.{command.replace('-', '_')}": f"ssmlm-{command}" for command in COMMANDS}
HEAVY_MODULES = ("torch", "transformers", "accelerate", "datasets")


def help_in_a_fresh_process(module: str, *command: str) -> subprocess.CompletedProcess:
    """`main([*command, '--help'])` of a command's module in a process of its own, which ends its stderr with the
    heavy libraries imported by then: `imported:` alone when there are none."""
    code = (f"import sys; from {module} import main; code = main({[*command, '--help']!r}); "
            f"print('imported:', *[name for name in {HEAVY_MODULES!r} if name in sys.modules], file=sys.stderr); "
            f"sys.exit(code)")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.mark.parametrize("module, prog", COMMAND_MODULES.items())
def test_every_help_answers_before_importing_torch_and_names_no_file_of_a_checkout(module, prog):
    """--help builds the parser and answers before the heavy libraries load (a timing would be noise: what is
    imported is what takes the time), as `python -m` prints the command's name, and cites only what a pip user has."""
    shown = help_in_a_fresh_process(module)
    assert shown.returncode == 0 and shown.stderr.strip() == "imported:", shown.stderr
    assert shown.stdout.startswith(f"usage: {prog} ")
    assert "docs/" not in shown.stdout and "scripts/" not in shown.stdout
    as_module = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert as_module.returncode == 0 and as_module.stdout == shown.stdout


@pytest.mark.parametrize("command", list(bench.COMMANDS))
def test_every_bench_command_help_answers_before_importing_torch_and_names_no_file_of_a_checkout(command):
    """The same for each command of ssmlm-bench: its options are built, and shown, without the heavy libraries."""
    shown = help_in_a_fresh_process("ssmlm.cli.bench", command)
    assert shown.returncode == 0 and shown.stderr.strip() == "imported:", shown.stderr
    assert shown.stdout.startswith(f"usage: ssmlm-bench {command} ")
    assert "docs/" not in shown.stdout and "scripts/" not in shown.stdout


@pytest.mark.parametrize("module, prog", COMMAND_MODULES.items())
def test_ctrl_c_while_a_command_imports_is_one_line_and_exit_code_130(module, prog, monkeypatch, capsys):
    """Every command imports its libraries after parsing, inside its entry point's handling of Ctrl-C."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", interrupted)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_intermixed_args", interrupted)
    assert importlib.import_module(module).main(["--help"]) == 130
    assert capsys.readouterr().err == f"{prog}: interrupted\n"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (building in the checkout would write build/ into it)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "ssmlm", source / "ssmlm", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(source)], check=True, capture_output=True, text=True, timeout=300)
    (built,) = out.glob("ssmlm-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel) -> Path:
    """A fresh venv with the wheel installed, the test environment's dependencies visible through a .pth file."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, text=True, timeout=300)
    site_packages = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                        check=True, capture_output=True, text=True).stdout.strip())
    (site_packages / "test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return root


def run(venv: Path, cwd: Path, *command: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": ""}
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(list(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_the_wheel_holds_the_configs_and_the_scripts_and_requires_no_optional_tool(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata,) = [name for name in names if name.endswith(".dist-info/METADATA")]
        requirements = Parser().parsestr(archive.read(metadata).decode()).get_all("Requires-Dist")
        (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    shipped = {path.relative_to(REPO).as_posix() for path in (REPO / "ssmlm" / "configs").rglob("*.yaml")}
    assert shipped <= names and "ssmlm/configs/accelerate/deepspeed-zero3.yaml" in shipped
    assert not [name for name in names if name.startswith(("tests/", "scripts/", "reports/", "docs/"))]
    for command in COMMANDS:
        assert f"ssmlm-{command} = ssmlm.cli.{command.replace('-', '_')}:main" in scripts
    # The heavy optional tools come only with their extras.
    plain = [requirement for requirement in requirements if "extra ==" not in requirement]
    assert not [requirement for requirement in plain if requirement.startswith(("deepspeed", "matplotlib"))]
    assert any(requirement.startswith("torch") for requirement in plain)


@pytest.mark.slow
def test_the_installed_commands_train_and_generate_outside_a_checkout(venv, tmp_path, corpus):
    work = tmp_path / "anywhere"
    work.mkdir()
    where = run(venv, work, "python", "-c", "import ssmlm; print(ssmlm.__file__)")
    assert where.returncode == 0 and where.stdout.startswith(str(venv)), where.stdout + where.stderr

    for command in COMMANDS:
        assert (venv / "bin" / f"ssmlm-{command}").exists()
        shown = run(venv, work, f"ssmlm-{command}", "--help", timeout=300)
        assert shown.returncode == 0 and shown.stdout.startswith(f"usage: ssmlm-{command}"), shown.stderr
        module = f"ssmlm.cli.{command.replace('-', '_')}"
        shown = run(venv, work, "python", "-m", module, "--help", timeout=300)
        assert shown.returncode == 0 and shown.stdout.startswith("usage: "), shown.stderr

    sources = [f"data.sources.{domain}.{split}={corpus / domain / f'{split}.jsonl'}"
               for domain in ("books", "code", "math") for split in ("train", "validation")]
    # gss-small sets data.build_corpus; with every source on the user's own files it is not built.
    trained = run(venv, work, "ssmlm-train", "--config", "gss-small", *sources, "data.seq_len=64", "data.num_proc=1", "model.hidden_size=32", "model.num_hidden_layers=2",
                  "tokenizer.vocab_size=512", "training.max_steps=3", "training.warmup_steps=1",
                  "training.eval_every=3", "training.eval_blocks=4", "output.dir=run", "output.save_every=3",
                  "output.tracker=null")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (work / "run" / "config.json").is_file() and os.listdir(work / "data") == ["cache"]  # no data/corpus
    model_dir = (work / "run").resolve()
    assert trained.stdout.splitlines()[-1] == \
        f'model saved to {model_dir}; generate with: ssmlm-generate --model {model_dir} --prompt "Once upon a time"'
    card = (model_dir / "README.md").read_text(encoding="utf-8")
    assert "trained by `ssmlm-train`" in card and "default corpus" not in card

    generated = run(venv, work, "ssmlm-generate", "--model", "run", "--prompt", "To be", "--greedy",
                    "--max-new-tokens", "4")
    assert generated.returncode == 0 and generated.stdout.startswith("To be"), generated.stderr[-3000:]

    missing = run(venv, work, "ssmlm-train", "--config", "no-such-config")
    assert missing.returncode == 2
    assert missing.stderr.startswith("ssmlm-train: error: config file not found: no-such-config; the shipped")
