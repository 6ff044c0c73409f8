#!/usr/bin/env bash
# Wheels for scripts/device_check.sh, made here (where pip reaches an index) for the GPU machine (Python 3.12,
# x86-64, no network), into .whl/ (ignored by git, carried to the machine). That machine has torch and most of the
# stack; it is given the transformers this project pins (the version installed here), pure Python.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
VERSION=$(.venv/bin/python -c "import transformers; print(transformers.__version__)")
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "transformers==$VERSION"
ls .whl
