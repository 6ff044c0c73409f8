#!/usr/bin/env bash
# Installs the public implementations that ssmlm-bench measures our models against, apart from the project
# (nothing here is a dependency of ssmlm), into DIR (default: .bench-contenders/ at the repository root, gitignored):
#
#   DIR/gss-port        gated-state-spaces-pytorch 0.1.0 (lucidrains' PyTorch port of GSS) with einops and scipy,
#                       which its package imports; the harness imports it in its own process, after the venv's
#                       packages. (`pip install -e ".[bench]"` installs it into the venv instead; either works.)
#   DIR/transformers4   transformers 4.39.3, whose MegaForCausalLM transformers 5 removed, with the tokenizers and
#                       huggingface_hub it needs; the harness runs it in a worker process with DIR/transformers4
#                       first on PYTHONPATH (ssmlm/benchmark/legacy_mega_worker.py).
#
# Both use the venv's torch and numpy: nothing here installs torch. Run it again to reinstall.
#
#   scripts/install_bench_contenders.sh [DIR]        then: ssmlm-bench train [--contenders-dir DIR]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${1:-$ROOT/.bench-contenders}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"

install() {  # TARGET PACKAGE...: only the packages named, each pinned or bounded to what the others need
    local target="$1"; shift
    rm -rf "$target"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps --target "$target" "$@"
}

install "$DIR/gss-port" "gated-state-spaces-pytorch==0.1.0" "einops>=0.4" "scipy>=1.11"
install "$DIR/transformers4" "transformers==4.39.3" "tokenizers>=0.15,<0.19" "huggingface_hub>=0.19.3,<0.24" \
    "requests>=2.31" "urllib3>=1.26" "certifi" "charset-normalizer>=2" "idna>=2.5"

# Each as the harness loads it.
"$PYTHON" - "$DIR/gss-port" <<'PY'
import sys
sys.path.append(sys.argv[1])
import importlib.metadata, gated_state_spaces_pytorch
print("gss-port:", "gated-state-spaces-pytorch", importlib.metadata.version("gated-state-spaces-pytorch"))
PY
PYTHONPATH="$DIR/transformers4${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" - <<'PY'
import transformers
from transformers import MegaForCausalLM
print("mega-chunk-hf4: transformers", transformers.__version__)
PY
echo "installed in $DIR"
