#!/usr/bin/env bash
# The device check (docs/gpu.md), for a machine with one NVIDIA GPU and no network, run from the repository root:
#
#   scripts/device_check.sh OUT              # on the GPU machine: writes OUT/device_check.md and its JSON
#   scripts/device_check.sh OUT --dry-run    # the same steps on the CPU at tiny sizes (the test suite runs this)
#
# 1. The core invariants on the device: the tests marked `device` (one pass == chunks == token by token for every
#    kernel and block kind, float64 and float32; generate() with the cache == greedy re-forward; bf16 autocast,
#    within the tolerance it needs) with SSMLM_TEST_DEVICE set. They are the suite's own tests, not copies.
# 2. Training tokens/s, peak memory and MFU (against the bf16 matmul peak of the same run) for GSS, Mega-chunk, the
#    hybrid, Llama (sdpa) and Mamba at 2k to 64k tokens, 64k tokens a step (ssmlm-bench train). Mamba without
#    its fused kernels runs transformers' reference path, which the benchmark does not run past 8k tokens.
# 3. Decoding ms/token after 1k, 32k and 128k-token prompts (ssmlm-bench generate), and batched decoding
#    throughput (ssmlm-bench decode-batch).
#
# The machine keeps its own Python, torch and transformers (within the range ssmlm supports); the checkout's ssmlm
# is used, not an installed one: the benchmarks run as `python -m ssmlm.cli.bench`.
set -euo pipefail
OUT=${1:?usage: scripts/device_check.sh OUT [--dry-run]}
MODE=${2:-}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1  # no network: nothing may wait on the Hub (transformers looks there for Mamba's kernels)

if [ "$MODE" = --dry-run ]; then
    DEVICE=cpu
    SELECT=(-k gss-dss)  # one model's device tests: the plumbing, not the invariants (the suite runs them all)
    TRAIN=(--lengths 128 --tokens-per-step 256 --repeats 1 --matmul-size 256)
    GENERATE=(--prompt-lengths 64 --new-tokens 4 --repeats 1 --matmul-size 256)
    BATCHED=(--prompt-lengths 64 --batch-sizes 1 4 --new-tokens 2 --repeats 1 --matmul-size 256)
elif [ -z "$MODE" ]; then
    DEVICE=cuda
    SELECT=()
    TRAIN=(--lengths 2048 8192 16384 65536 --tokens-per-step 65536 --repeats 3)
    GENERATE=(--prompt-lengths 1024 32768 131072 --new-tokens 64 --repeats 3)
    BATCHED=(--prompt-lengths 1024 8192 --batch-sizes 1 4 16 64 --new-tokens 32 --repeats 3)
else
    echo "usage: scripts/device_check.sh OUT [--dry-run]" >&2
    exit 2
fi
MODELS=(gss mega-chunk hybrid llama mamba)

"$PYTHON" - "$OUT/machine.json" "$DEVICE" <<'PY'
import json, platform, sys
import torch, transformers
device = sys.argv[2]
facts = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
         "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
         "cuda": torch.version.cuda, "bf16_supported": device == "cuda" and torch.cuda.is_bf16_supported()}
json.dump(facts, open(sys.argv[1], "w"), indent=1)
print(facts)
PY

status=0
echo "$(date +%T) invariants"
# Only the test files that hold device tests: the others import what the GPU machine lacks (datasets, deepspeed),
# and one module that fails to import stops the whole collection.
mapfile -t DEVICE_TESTS < <(grep -l "pytest.mark.device" tests/test_*.py)
[ ${#DEVICE_TESTS[@]} -gt 0 ] || { echo "no test file holds a device test" >&2; exit 1; }
SSMLM_TEST_DEVICE=$DEVICE "$PYTHON" -m pytest -q -m device -p no:cacheprovider "${SELECT[@]}" "${DEVICE_TESTS[@]}" \
    >"$OUT/invariants.log" 2>&1 || status=1
tail -n 3 "$OUT/invariants.log"
# Each benchmark's progress, tables and warnings go to bench.log; a failure's last lines are printed at the end.
echo "$(date +%T) training benchmark"
"$PYTHON" -m ssmlm.cli.bench train --device "$DEVICE" --models "${MODELS[@]}" "${TRAIN[@]}" \
    --out "$OUT/train.json" --markdown "$OUT/train.md" >>"$OUT/bench.log" 2>&1 || status=1
echo "$(date +%T) generation benchmark"
"$PYTHON" -m ssmlm.cli.bench generate --device "$DEVICE" --models "${MODELS[@]}" "${GENERATE[@]}" \
    --out "$OUT/generate.json" --markdown "$OUT/generate.md" >>"$OUT/bench.log" 2>&1 || status=1
echo "$(date +%T) batched decoding benchmark"
"$PYTHON" -m ssmlm.cli.bench decode-batch --device "$DEVICE" --models "${MODELS[@]}" "${BATCHED[@]}" \
    --out "$OUT/batched.json" --markdown "$OUT/batched.md" >>"$OUT/bench.log" 2>&1 || status=1

{
    echo "# Device check ($DEVICE)"
    echo
    echo '```'
    cat "$OUT/machine.json"
    echo
    echo '```'
    echo
    echo "## Invariants: \`pytest -m device\` on $DEVICE"
    echo
    echo '```'
    tail -n 15 "$OUT/invariants.log"
    echo '```'
    for part in train generate batched; do
        echo
        if [ -f "$OUT/$part.md" ]; then
            sed 's/^#/##/' "$OUT/$part.md"
            rm "$OUT/$part.md"
        else
            echo "## $part: no results (bench.log has why)"
        fi
    done
} >"$OUT/device_check.md"
echo "wrote $OUT/device_check.md"
[ $status -eq 0 ] || tail -n 40 "$OUT/bench.log"
exit $status
