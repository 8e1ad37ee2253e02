"""Ray job submission: `python -m pipelines.learn` submitted with JobSubmissionClient to a real head on 127.0.0.1;
the flags round-trip; cluster.yaml has what the launcher needs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cns_ray.config import LearnerConfig, SelectionConfig, StoreConfig
from conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "cns_ray" / "data" / "examples"


def test_cluster_yaml_has_what_the_launcher_needs():
    import yaml

    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    for key in ("cluster_name", "max_workers", "provider", "available_node_types", "head_node_type",
                "setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in cfg, f"cluster.yaml lacks {key}"
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    gpu = [t for name, t in types.items() if name != cfg["head_node_type"] and t["resources"].get("GPU", 0) >= 1]
    assert gpu and gpu[0]["min_workers"] == 0 and gpu[0]["max_workers"] >= 1
    assert types[cfg["head_node_type"]]["resources"].get("GPU", 0) == 0
    assert any("torch" in c for c in cfg["setup_commands"]) and any("cns-ray" in c for c in cfg["setup_commands"])
    torch_at = next(i for i, c in enumerate(cfg["setup_commands"]) if "torch" in c)
    project_at = next(i for i, c in enumerate(cfg["setup_commands"]) if "cns-ray" in c)
    assert torch_at < project_at, "torch must be installed before the project"
    assert any("--head" in c for c in cfg["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP" in c for c in cfg["worker_start_ray_commands"])


def test_learn_entrypoint_round_trips_through_the_pipeline_parser():
    import argparse
    import shlex

    from cns_ray.cli import add_common
    from cns_ray.cli.learn_cmds import add_learn_args, learn_request_and_config
    from cns_ray.jobs.submit import learn_entrypoint
    from cns_ray.learn import ConceptRequest

    req = ConceptRequest("acme", "rex", "dog", "s3://b/in/rex", token="<rex-x>", captions=["a b", "c"], parent_version=4)
    cfg = LearnerConfig(steps=7, batch_size=2, checkpoint_every=3, num_workers=2, cpus_per_worker=0.5, use_gpu=True,
                        augment=False, reg_lambda=0.5, selection=SelectionConfig(select_ratio=0.2, budget=0.01))
    argv = shlex.split(learn_entrypoint(req, cfg, "s3://b/store", "tiny", run_name="r1"))
    assert argv[:3] == ["python", "-m", "pipelines.learn"]
    parser = argparse.ArgumentParser()
    add_common(parser)
    add_learn_args(parser)
    args = parser.parse_args(argv[3:])
    assert learn_request_and_config(args) == (req, cfg)
    assert (args.store, args.base_model, args.run_name) == ("s3://b/store", "tiny", "r1")


def _ray_env() -> dict:
    env = dict(os.environ)
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the job's `python` = ours
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture()
def ray_head():
    """A real `ray start --head --block` on 127.0.0.1 with its own ports and temp dir; yields the jobs address."""
    from ray.job_submission import JobSubmissionClient

    temp = tempfile.mkdtemp(prefix="cnsray-", dir="/tmp")  # short: Ray's unix socket paths are length-limited
    dash = free_port()
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
           "--port", str(free_port()), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
           "--temp-dir", temp, "--num-cpus", "4", "--ray-client-server-port", str(free_port()),
           "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
           "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
           "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port())]
    log = open(os.path.join(temp, "head.log"), "w")
    proc = subprocess.Popen(cmd, env=_ray_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=temp)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"ray start exited {proc.returncode}: {Path(temp, 'head.log').read_text()[-2000:]}"
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except Exception:
                assert time.monotonic() < deadline, "the head's job API did not come up in 120 s"
                time.sleep(1)
        yield address
    finally:
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ray_job_submit_pipelines_learn(ray_head, tmp_path):
    from cns_ray.jobs.submit import job_logs, job_status, list_jobs, submit_learn_job
    from cns_ray.learn import ConceptRequest
    from cns_ray.store import ConceptStore

    store_uri = str(tmp_path / "store")
    req = ConceptRequest("acme", "mug", "mug", str(EXAMPLES / "mug"))
    cfg = LearnerConfig(steps=4, checkpoint_every=2, batch_size=2, cpus_per_worker=0.5, max_failures=1)
    job_id = submit_learn_job(ray_head, req, cfg, store_uri, "tiny", working_dir=str(ROOT))

    deadline = time.monotonic() + 400
    while (st := job_status(ray_head, job_id))["status"] not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline, f"job still {st['status']}: {job_logs(ray_head, job_id)[-3000:]}"
        time.sleep(2)
    logs = job_logs(ray_head, job_id)
    assert st["status"] == "SUCCEEDED", logs[-3000:]
    assert "committed version 1 for tenant acme" in logs
    assert st["metadata"] == {"cns": "learn", "tenant": "acme", "concept": "mug"}
    assert job_id in [j["id"] for j in list_jobs(ray_head)]

    store = ConceptStore(StoreConfig(uri=store_uri))
    assert store.head("acme") == 1 and store.load("acme").concept("mug") is not None
