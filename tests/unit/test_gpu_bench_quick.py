"""benchmarks/gpu.sh --quick: the GPU benchmark's code runs end to end on CPU (the CI hook; no timing is asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_bench_quick_runs_and_prints_every_table():
    env = {**os.environ, "PYTHON": sys.executable, "GPU_BENCH_TIMEOUT_S": "600"}
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--quick"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    for title in ("### 1. Swap round trip", "### 2. Batches", "### 3. Learner step", "Headline, batch of 8"):
        assert title in text, text
    swap = text.split("### 1.")[1].split("###")[0]
    assert swap.count("| yes |") == 3 and "| NO |" not in swap  # base weights bit-identical after every swap
    batches = [line for line in text.split("### 2.")[1].split("###")[0].splitlines() if line.startswith("| ") and "x |" in line]
    assert [line.split("|")[1].strip() for line in batches] == ["1", "4", "8", "16"]
    learn = text.split("### 3.")[1]
    assert "CNS" in learn and "LoRA r=4" in learn


def test_gpu_bench_without_a_device_says_what_to_do():
    import torch

    if torch.cuda.is_available():
        return
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--only", "swap"], cwd=ROOT,
                         env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "no CUDA device" in out.stderr and "--quick" in out.stderr
