"""A Cones learning run under Ray Train: a killed worker resumes from a checkpoint (its accumulated W * dL/dW sums),
commits once, and selects what an uninterrupted run selects."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from cns_ray.config import LearnerConfig, StoreConfig

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "cns_ray" / "data" / "examples"


def _train_workers() -> list[psutil.Process]:
    found = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            pass
    return found


def test_killed_cones_worker_resumes_and_selects_as_an_uninterrupted_run(ray_local, tmp_path, tiny_base):
    from cns_ray.jobs.train import run_learning
    from cns_ray.learn import ConceptRequest, make_learner
    from cns_ray.store import ConceptStore

    store_uri = str(tmp_path / "store")
    store = ConceptStore(StoreConfig(uri=store_uri))
    request = ConceptRequest(tenant="acme", concept="toy", class_word="toy", images=str(EXAMPLES / "toy"))
    cfg = LearnerConfig(steps=24, checkpoint_every=3, batch_size=2, cpus_per_worker=0.5, max_failures=2,
                        method="cones", cones_ratio=0.02)
    progress: list[int] = []
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["version"] = run_learning(request, cfg, store_uri, "tiny", run_name="cones-kill",
                                              status_cb=lambda step, total, loss: progress.append(step))
        except BaseException as e:  # noqa: BLE001 - surfaced below
            outcome["error"] = e

    th = threading.Thread(target=run)
    th.start()
    snapshot = tmp_path / "store" / "checkpoints" / "acme" / "cones-kill" / "checkpoint_manager_snapshot.json"
    killed = None
    deadline = time.monotonic() + 480
    while th.is_alive() and time.monotonic() < deadline:
        if killed is None and progress and progress[-1] >= 6 and progress[-1] < cfg.steps - 3 and snapshot.exists():
            workers = _train_workers()
            assert len(workers) == 1, workers
            killed = workers[0].pid
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    th.join(timeout=5)
    assert not th.is_alive(), "learning run did not finish in time"
    assert "error" not in outcome, repr(outcome.get("error"))
    assert killed is not None, f"no registered checkpoint before the run ended: {progress[-3:]}"
    assert outcome["version"] == 1 and [v.version for v in store.history("acme")] == [1]

    state = store.load("acme", shapes=tiny_base.target_shapes(), base_id=tiny_base.base_id)
    rec = state.concept("toy")
    assert rec.method == "cones" and state.delta.nnz == 0 and state.tokens == {}
    assert rec.stats["steps"] == cfg.steps
    resumed = rec.stats["resumed_from_steps"]
    assert len(resumed) == 1 and 0 < resumed[0] < cfg.steps and resumed[0] % cfg.checkpoint_every == 0, resumed
    assert not (tmp_path / "store" / "checkpoints" / "acme" / "cones-kill").exists()

    # the same run without a kill, in this process with the worker's thread count: the per-step seeds make the sums
    # the same up to float reduction order, so the selections agree (near-ties aside)
    other = ConceptStore(StoreConfig(uri=str(tmp_path / "other")))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        learner = make_learner(tiny_base, other, request, cfg)
        while learner.step_index < learner.total_steps:
            learner.step()
        want = learner.neurons()
    finally:
        torch.set_num_threads(threads)
    got = rec.neurons
    common = sum(int(torch.isin(got[n], want[n]).sum()) for n in got if n in want)
    total = max(sum(i.numel() for i in want.values()), 1)
    assert common >= 0.95 * total and abs(rec.nnz - total) <= 0.05 * total, (common, rec.nnz, total)
