"""Ray Train learning runs: a killed worker resumes from its checkpoint; one commit, only on success."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from cns_ray.config import LearnerConfig, StoreConfig
from cns_ray.errors import NotFoundError

EXAMPLES = Path(__file__).resolve().parents[2] / "cns_ray" / "data" / "examples"


def _train_workers() -> list[psutil.Process]:
    """Ray Train worker processes of this test's own Ray (descendants of this process: ray_local started it)."""
    found = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            pass
    return found


def _history(store, tenant):
    try:
        return store.history(tenant)
    except NotFoundError:
        return []


@pytest.mark.slow
def test_killed_worker_resumes_and_commits_exactly_once(ray_local, tmp_path):
    from cns_ray.jobs.train import run_learning
    from cns_ray.learn import ConceptRequest
    from cns_ray.store import ConceptStore

    store_uri = str(tmp_path / "store")
    store = ConceptStore(StoreConfig(uri=store_uri))
    request = ConceptRequest(tenant="acme", concept="toy", class_word="toy", images=str(EXAMPLES / "toy"))
    cfg = LearnerConfig(steps=40, checkpoint_every=3, batch_size=2, cpus_per_worker=0.5, max_failures=2)

    progress: list[tuple[float, int]] = []
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["version"] = run_learning(
                request, cfg, store_uri, "tiny", run_name="kill-test",
                status_cb=lambda step, total, loss: progress.append((time.monotonic(), step)),
            )
        except BaseException as e:  # noqa: BLE001 - surfaced by the assertions below
            outcome["error"] = e

    th = threading.Thread(target=run)
    th.start()
    # Ray Train writes this snapshot when its controller registers a checkpoint: kill only after that, so the
    # restarted worker must resume from a checkpoint (a report just before a crash may not be registered yet).
    snapshot = tmp_path / "store" / "checkpoints" / "acme" / "kill-test" / "checkpoint_manager_snapshot.json"
    killed, killed_at, versions_seen, verify_problems = None, 0, set(), []
    deadline = time.monotonic() + 420
    while th.is_alive() and time.monotonic() < deadline:
        versions_seen.add(tuple(v.version for v in _history(store, "acme")))
        if killed is None and progress and progress[-1][1] >= 6 and snapshot.exists():
            killed_at = progress[-1][1]
            workers = _train_workers()
            assert len(workers) == 1, f"expected one Train worker, found {workers}"
            killed = workers[0].pid
            os.kill(killed, signal.SIGKILL)
            verify_problems += store.verify()
        time.sleep(0.2)
    th.join(timeout=5)
    assert not th.is_alive(), "learning run did not finish in time"
    assert "error" not in outcome, f"run failed: {outcome.get('error')!r}"
    assert killed is not None, f"no registered checkpoint before the run ended: {progress[-3:]}"

    # Exactly one version, only after fit() succeeded; never a partial one while the run was going.
    assert outcome["version"] == 1
    history = store.history("acme")
    assert [v.version for v in history] == [1] and history[0].concepts == ["toy"]
    assert versions_seen <= {(), (1,)}, versions_seen
    assert verify_problems == [] and store.verify() == []

    # The restarted worker resumed from a checkpoint reported before the kill (not from step 0) and still ran
    # all steps; a new worker process did the rest.
    state = store.load("acme")
    stats = state.concept("toy").stats
    assert stats["steps"] == cfg.steps
    resumed = stats["resumed_from_steps"]
    assert len(resumed) == 1 and 0 < resumed[0] < cfg.steps and resumed[0] % cfg.checkpoint_every == 0, resumed
    steps_after_kill = [s for _, s in progress if s > killed_at]
    assert steps_after_kill and steps_after_kill[-1] == cfg.steps
    assert all(p.pid != killed for p in _train_workers())

    # The run's checkpoints are gone after the commit.
    assert not (tmp_path / "store" / "checkpoints" / "acme" / "kill-test").exists()


def test_unknown_parent_version_fails_before_training(tmp_path):
    """No Ray needed: the driver checks the parent version before starting a Train run."""
    from cns_ray.jobs.train import run_learning
    from cns_ray.learn import ConceptRequest
    from cns_ray.store import ConceptStore

    store_uri = str(tmp_path / "store")
    request = ConceptRequest("acme", "toy", "toy", str(EXAMPLES / "toy"), parent_version=3)
    with pytest.raises(NotFoundError, match=r"no version 3.*parent_version"):
        run_learning(request, LearnerConfig(steps=2), store_uri, "tiny")
    assert _history(ConceptStore(StoreConfig(uri=store_uri)), "acme") == []
