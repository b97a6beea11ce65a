"""benchmarks/gpu.py (`make gpu-check`) runs where there is no GPU: its quick CPU mode measures and compares the CPU
with itself, importing none of the pipeline's extras; without CUDA its default mode says so and exits 0."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"
# What a plain CUDA environment lacks: importing any of these fails in the run below.
ABSENT = ("dvclive", "jiwer", "papermill", "espeakng_loader", "phonemizer", "pandas", "matplotlib")


def run(*argv, env=None):
    """(exit code, the JSON line, stderr) of benchmarks/gpu.py with PYTHONPATH=lib and the ABSENT modules blocked."""
    code = (
        f"import runpy, sys; sys.modules.update(dict.fromkeys({ABSENT!r})); sys.argv = [{str(SCRIPT)!r}, *{argv!r}]; "
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib"), "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    lines = proc.stdout.strip().splitlines()
    return proc.returncode, json.loads(lines[-1]) if lines else None, proc.stderr


@pytest.mark.slow
def test_quick_cpu_mode_measures_and_is_deterministic():
    rc, out, err = run("--device", "cpu", "--quick", "--steps", "1", "--repeats", "1")
    assert rc == 0, err
    assert out["device"] == "cpu" and out["quick"] and out["pass"]
    assert {m["vertices"] for m in out["render"].values()} == {5023, 23370}
    assert all(m["fwd_bwd_ms"] > 0 and m["frames"] == 8 for m in out["render"].values())
    step = out["step"]
    assert step["step_ms"] > 0 and step["steps_per_s"] > 0 and step["frames"] > 0
    checks = out["compare"]["checks"]
    assert {"loss_loss", "loss_mse", "loss_ctc", "loss_ce", "gradient_animator", "update_reader"} <= set(checks)
    assert all(c["pass"] and c["rel_diff"] == 0 for c in checks.values())  # the CPU against itself: bit for bit
    assert checks["loss_ctc"]["cpu"] > 0 and checks["gradient_animator"]["cpu_norm"] > 0
    assert out["forbidden_imports"] == [] and out["provenance"]["torch"]


def test_without_cuda_the_default_mode_says_so_and_exits_0():
    rc, out, err = run(env={"CUDA_VISIBLE_DEVICES": ""})
    assert rc == 0, err
    assert out["cuda"] is False and out["reason"] and "render" not in out
