#!/usr/bin/env bash
# The HF-facing tests (`pytest -m hf`: generation == re-forward for every block and kernel, caches, save/load, Auto
# classes, pipeline, peft, TRL, Trainer, compile, remote code, transformers' own common model tests) again, each in a
# venv of its own:
#   oldest  every dependency of pyproject.toml at the floor it declares (transformers, tokenizers, accelerate, ...),
#   newest  the newest transformers release below 6 on the package index, and the newest of the rest.
# pip's cache makes the venvs; ssmlm warns at import when the newest release is past the range it was tested on,
# and the tests then say whether generation still holds.
# Usage: scripts/test_transformers_range.sh [oldest] [newest] [-- PYTEST ARGS]     (default: both, `-q`)
set -euo pipefail
cd "$(dirname "$0")/.."

which=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do which+=("$1"); shift; done
[ $# -gt 0 ] && shift
[ ${#which[@]} -gt 0 ] || which=(oldest newest)
pytest_args=("$@")
[ ${#pytest_args[@]} -gt 0 ] || pytest_args=(-q)

# `name>=X` of every dependency as `name==X`: the oldest venv installs exactly the declared floors.
floors() {
    python3 - <<'PY'
import re, tomllib
for requirement in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    name, floor = re.match(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)", requirement).groups()
    print(f"{name}=={floor}")
PY
}

for kind in "${which[@]}"; do
    venv=".venv-$kind"
    start=$(date +%s)
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch==2.13.0
    case "$kind" in
        oldest) floors > "$venv/floors.txt"
                "$venv/bin/pip" install -q -c "$venv/floors.txt" -e ".[dev]" ;;
        newest) "$venv/bin/pip" install -q -e ".[dev]"
                "$venv/bin/pip" install -q --upgrade "transformers<6" ;;
        *) echo "unknown venv '$kind': oldest or newest" >&2; exit 2 ;;
    esac
    versions=$("$venv/bin/python" -c "import torch, transformers, tokenizers, accelerate, datasets, peft, trl
print(f'transformers {transformers.__version__}, torch {torch.__version__}, tokenizers {tokenizers.__version__}, '
      f'accelerate {accelerate.__version__}, datasets {datasets.__version__}, peft {peft.__version__}, trl {trl.__version__}')")
    echo "== $kind: $versions (venv made in $(( $(date +%s) - start )) s)"
    start=$(date +%s)
    "$venv/bin/python" -m pytest -m hf -p no:cacheprovider "${pytest_args[@]}"
    echo "== $kind: the HF-facing tests took $(( $(date +%s) - start )) s"
done
