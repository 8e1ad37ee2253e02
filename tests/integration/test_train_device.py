"""``cns learn --gpu`` on a node that advertises a GPU but has no CUDA (here: a private local Ray declared with
``num_gpus=1`` and a CPU-only torch): the run asks Ray Train for the GPU, computes on the device the worker was given
(the CPU here, with a warning) and uses gloo, not NCCL, for its process group. Runs in a subprocess: its own Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "cns_ray" / "data" / "examples"

SCRIPT = """
import json, sys
from cns_ray.jobs.ray_env import init_ray
init_ray("local", num_cpus=2, num_gpus=1)
import ray
from cns_ray.config import LearnerConfig, StoreConfig
from cns_ray.jobs.train import run_learning
from cns_ray.learn import ConceptRequest
from cns_ray.store import ConceptStore
store_uri, images = sys.argv[1], sys.argv[2]
cfg = LearnerConfig(steps=2, checkpoint_every=0, batch_size=2, cpus_per_worker=0.5, max_failures=0, use_gpu=True)
version = run_learning(ConceptRequest("acme", "toy", "toy", images), cfg, store_uri, "tiny")
stats = ConceptStore(StoreConfig(uri=store_uri)).load("acme").concept("toy").stats
print("RESULT " + json.dumps({"version": version, "gpus": ray.cluster_resources().get("GPU"), **stats}), flush=True)
"""


@pytest.mark.slow
def test_gpu_run_without_cuda_trains_on_the_cpu_with_gloo(tmp_path):
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "store"), str(EXAMPLES / "toy")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["version"] == 1 and result["gpus"] == 1.0
    assert result["train_device"] == "cpu"
    assert result["process_group"] == "gloo"
