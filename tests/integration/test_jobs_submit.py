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


@pytest.mark.parametrize("name", ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "CNS_ADMIN_KEY", "DB_PASSWORD"])
def test_secret_env_refused_before_contacting_the_cluster(name, capsys):
    from cns_ray.cli import main

    port = free_port()  # nothing listens there: the refusal must come first
    rc = main(["submit", "learn", "--tenant", "acme", "--concept", "mug", "--images", str(EXAMPLES / "mug"),
               "--class-word", "mug", "--address", f"http://127.0.0.1:{port}", "--env", f"{name}=s3cr3t",
               "--env", "AWS_DEFAULT_REGION=eu-west-1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert name in err and "runtime_env" in err and "--allow-secret-env" in err and "IAM" in err
    assert "AWS_DEFAULT_REGION" not in err and "s3cr3t" not in err and "Traceback" not in err


def test_unreachable_cluster_is_one_line(capsys, caplog):
    from cns_ray.cli import main

    port = free_port()
    rc = main(["submit", "learn", "--tenant", "acme", "--concept", "mug", "--images", str(EXAMPLES / "mug"),
               "--class-word", "mug", "--address", f"http://127.0.0.1:{port}", "--env", "AWS_SECRET_ACCESS_KEY=x",
               "--allow-secret-env"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"cannot reach the Ray jobs API at http://127.0.0.1:{port}" in lines[0]
    assert "--address" in lines[0]
    assert any("AWS_SECRET_ACCESS_KEY" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    for verb in (["jobs", "list"], ["jobs", "status", "raysubmit_x"], ["jobs", "stop", "raysubmit_x"]):
        assert main([*verb, "--address", f"http://127.0.0.1:{port}"]) == 2
        assert "cannot reach the Ray jobs API" in capsys.readouterr().err


def test_images_resolved_at_submission(tmp_path, capsys):
    from cns_ray.cli import main
    from cns_ray.errors import ConfigError
    from cns_ray.jobs.submit import job_images_path

    rc = main(["submit", "learn", "--tenant", "acme", "--concept", "mug", "--images", "no/such/dir", "--class-word",
               "mug", "--address", f"http://127.0.0.1:{free_port()}"])
    err = capsys.readouterr().err
    assert rc == 2 and "--images 'no/such/dir': no such folder" in err
    inside = EXAMPLES / "mug"
    assert job_images_path(str(inside), str(ROOT)) == os.path.join("cns_ray", "data", "examples", "mug")
    assert job_images_path(str(inside), None) == str(inside)  # no upload: this machine's absolute path
    assert job_images_path("s3://b/imgs", str(ROOT)) == "s3://b/imgs"
    with pytest.raises(ConfigError, match="tests/, which the job upload leaves out"):
        job_images_path(str(ROOT / "tests" / "unit"), str(ROOT))


def test_working_dir_upload_leaves_out_what_a_job_does_not_need(tmp_path):
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    from cns_ray.jobs.submit import WORKING_DIR_EXCLUDES

    target = tmp_path / "wd.zip"
    create_package(str(ROOT), target, include_gitignore=True, excludes=list(WORKING_DIR_EXCLUDES))  # what Ray uploads
    names = zipfile.ZipFile(target).namelist()
    assert "pipelines/learn.py" in names and "cns_ray/data/base/tiny-world/model_index.json" in names
    for top in ("tests/", "docs/", "benchmarks/", ".venv/", ".git/", "cns-store/", "cns-out/", "cns_ray/data/eval/"):
        assert not any(n.startswith(top) for n in names), top
    folders = {n.split("/")[0] for n in names if "/" in n.rstrip("/")}
    assert folders <= {"cns_ray", "pipelines", "deploy"}, folders


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
        # `ray start --block` does not exit on SIGTERM within 20 s (measured: the whole 20 s were spent, every run);
        # the head's processes share its process group, so SIGKILL after a short grace ends them all at once.
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ray_job_submit_pipelines_learn(ray_head, tmp_path, monkeypatch):
    from cns_ray.jobs.submit import JobsAPIError, follow_logs, job_logs, job_status, list_jobs, stop_job, submit_learn_job
    from cns_ray.learn import ConceptRequest
    from cns_ray.store import ConceptStore

    store_uri = str(tmp_path / "store")
    monkeypatch.chdir(ROOT)  # a relative --images path, resolved at submission and carried by the upload
    req = ConceptRequest("acme", "mug", "mug", os.path.relpath(EXAMPLES / "mug", ROOT))
    cfg = LearnerConfig(steps=4, checkpoint_every=2, batch_size=2, cpus_per_worker=0.5, max_failures=1)
    job_id = submit_learn_job(ray_head, req, cfg, store_uri, "tiny", working_dir=str(ROOT))

    chunks: list[str] = []
    status_at_first_chunk: list[str] = []

    def write(chunk: str) -> None:
        if not chunks:
            status_at_first_chunk.append(job_status(ray_head, job_id)["status"])
        chunks.append(chunk)

    follow_logs(ray_head, job_id, write)  # returns when the job's log stream ends
    deadline = time.monotonic() + 60
    while (st := job_status(ray_head, job_id))["status"] not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline, f"job still {st['status']}: {job_logs(ray_head, job_id)[-3000:]}"
        time.sleep(1)
    logs = job_logs(ray_head, job_id)
    assert status_at_first_chunk == ["RUNNING"], status_at_first_chunk  # streamed while it ran, not after
    assert "committed version 1" in "".join(chunks)
    assert st["status"] == "SUCCEEDED", logs[-3000:]
    assert "committed version 1 for tenant acme" in logs
    assert st["metadata"] == {"cns": "learn", "tenant": "acme", "concept": "mug"}
    assert job_id in [j["id"] for j in list_jobs(ray_head)]

    store = ConceptStore(StoreConfig(uri=store_uri))
    assert store.head("acme") == 1 and store.load("acme").concept("mug") is not None

    # Unknown ids are one-line errors; a running job can be stopped.
    with pytest.raises(JobsAPIError, match=r"no job 'raysubmit_nope'.*cns jobs list"):
        job_status(ray_head, "raysubmit_nope")
    long = submit_learn_job(ray_head, ConceptRequest("acme", "mug2", "mug", str(EXAMPLES / "mug")),
                            LearnerConfig(steps=5000, cpus_per_worker=0.5), store_uri, "tiny", working_dir=str(ROOT))
    assert stop_job(ray_head, long) in (True, False)
    deadline = time.monotonic() + 120
    while (st := job_status(ray_head, long))["status"] != "STOPPED":
        assert st["status"] not in ("SUCCEEDED", "FAILED") and time.monotonic() < deadline, st
        time.sleep(1)
