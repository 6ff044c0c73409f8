"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`) for the installed release.

They ship only in transformers' sdist (not the wheel), as tests/test_modeling_common.py and
tests/test_configuration_common.py. `load_common_tests()` downloads the sdist of the installed version once (cached
under ~/.cache/ssmlm-test/transformers-sdist/VERSION/, or $SSMLM_TEST_CACHE), extracts those two files into a
temporary package, and adds stubs for what they import from transformers' test tree that the sdist lacks:
  - `.generation.test_utils.GenerationTesterMixin`: empty. Its generate() tests are not run here; ssmlm's own tests
    check generation against the full prefix.
  - `.exporters.test_export.ExportTesterMixin`: empty (torch.export tests, not run here).
  - `.utils.test_configuration_utils.config_common_kwargs`: the common config fields ConfigTester sets to
    non-default values, as transformers 5 lists them.
The pytest marks the files use (flash_attn_test, ...) are registered with the running pytest, as transformers'
own configuration does, so that they import under --strict-markers.
"""

import atexit
import functools
import importlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

CACHE_DIR = Path(os.environ.get("SSMLM_TEST_CACHE", Path.home() / ".cache" / "ssmlm-test")) / "transformers-sdist"
COMMON_FILES = ("test_modeling_common.py", "test_configuration_common.py")
PACKAGE = "transformers_common_tests"  # the temporary package's name; the files import each other relatively
DOWNLOAD_TIMEOUT_S = 600

CONFIG_COMMON_KWARGS = '''config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}
'''

# The stub modules, by path in the package.
SHIM = {
    "__init__.py": "",
    "generation/__init__.py": "",
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    "exporters/__init__.py": "",
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "utils/__init__.py": "",
    "utils/test_configuration_utils.py": CONFIG_COMMON_KWARGS,
}


class CommonTestsUnavailable(RuntimeError):
    """The sdist of the installed transformers could not be had (no network, no such release on PyPI)."""


def sdist(version: str = transformers.__version__) -> Path:
    """The sdist of transformers `version`, downloaded with pip into the cache on first use."""
    directory = CACHE_DIR / version
    cached = sorted(directory.glob("transformers-*.tar.gz"))
    if cached:
        return cached[0]
    directory.mkdir(parents=True, exist_ok=True)
    # Downloaded beside the cache and moved in whole, so that a download cut short never looks cached.
    with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as partial:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--retries", "3", "--no-deps",
                   "--no-binary", ":all:", f"transformers=={version}", "-d", partial]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise CommonTestsUnavailable(
                f"transformers {version}'s sdist: pip download took over {DOWNLOAD_TIMEOUT_S} s") from None
        downloaded = sorted(Path(partial).glob("transformers-*.tar.gz"))
        if result.returncode or not downloaded:
            lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
            raise CommonTestsUnavailable(f"transformers {version}'s common model tests need its sdist, which could not "
                                         f"be downloaded ({lines[-1] if lines else 'pip gave no sdist'})")
        target = directory / downloaded[0].name
        os.replace(downloaded[0], target)
    return target


def extract(archive: Path, package_dir: Path) -> None:
    """The common test files of the sdist `archive`, and the shim, as the package at `package_dir`."""
    with tarfile.open(archive) as tar:
        # Members are "transformers-VERSION/tests/NAME"; only the files named are read, by name.
        members = {Path(member.name).parts[1:]: member for member in tar.getmembers() if member.isfile()}
        for name in COMMON_FILES:
            member = members.get(("tests", name))
            if member is None:
                raise CommonTestsUnavailable(f"{archive.name} has no tests/{name}")
            (package_dir / name).write_bytes(tar.extractfile(member).read())
    for path, text in SHIM.items():
        (package_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (package_dir / path).write_text(text, encoding="utf-8")


# The running pytest's configuration, set by conftest.py's pytest_configure.
PYTEST_CONFIG = None


def register_marks(source: str) -> None:
    """Register the pytest marks `source` applies with the running pytest, if any: they are transformers' own, which
    its pytest configuration declares, and --strict-markers refuses undeclared marks."""
    config = PYTEST_CONFIG
    if config is None:
        return
    for name in sorted(set(re.findall(r"\bmark\.([a-z][a-z0-9_]*)", source))):
        config.addinivalue_line("markers", f"{name}: transformers' mark, used by its common model tests")


@functools.cache
def load_common_tests():
    """(test_modeling_common, test_configuration_common) of the installed transformers, imported from its sdist.
    Raises CommonTestsUnavailable, in one line, where the sdist cannot be had."""
    archive = sdist()
    root = Path(tempfile.mkdtemp(prefix="ssmlm-transformers-common-"))
    # Removed when the interpreter exits; the imported modules stay usable until then.
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    (root / PACKAGE).mkdir()
    extract(archive, root / PACKAGE)
    for name in COMMON_FILES:
        register_marks((root / PACKAGE / name).read_text(encoding="utf-8"))
    sys.path.insert(0, str(root))
    try:
        modeling = importlib.import_module(f"{PACKAGE}.test_modeling_common")
        configuration = importlib.import_module(f"{PACKAGE}.test_configuration_common")
    finally:
        sys.path.remove(str(root))
    return modeling, configuration
