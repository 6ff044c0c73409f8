"""scripts/device_check.sh, dry-run on the CPU: the GPU check's every step (the device-marked invariant tests,
training, decoding and batched-decoding benchmarks, the summary) runs at tiny sizes and writes what it should,
without the packages the GPU machine lacks (fixtures/device_machine/sitecustomize.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEVICE_MACHINE = Path(__file__).parent / "fixtures" / "device_machine"


@pytest.mark.slow
def test_the_device_check_runs_end_to_end_on_the_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join([str(DEVICE_MACHINE), *filter(None, [os.environ.get("PYTHONPATH")])])}
    run = subprocess.run(["bash", "scripts/device_check.sh", str(tmp_path), "--dry-run"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "batched.json", "bench.log", "device_check.md", "generate.json", "invariants.log", "machine.json", "train.json"]
    log = (tmp_path / "invariants.log").read_text()
    assert " passed" in log and "failed" not in log
    train = json.loads((tmp_path / "train.json").read_text())
    assert {row["model"] for row in train["train"]} == {"gss", "mega-chunk", "hybrid", "llama", "mamba"}
    assert all(row["status"] == "ok" and row["batch"] == 2 for row in train["train"])  # 256 tokens a step
    batched = json.loads((tmp_path / "batched.json").read_text())
    assert all(row["status"] == "ok" for row in batched["results"])
    summary = (tmp_path / "device_check.md").read_text()
    assert summary.startswith("# Device check (cpu)") and "## Batched decoding" in summary
