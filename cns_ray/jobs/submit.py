"""Submit learning runs as Ray jobs (``ray job submit`` equivalent) through Ray's ``JobSubmissionClient``.

The job's entrypoint is ``python -m pipelines.learn ...`` run by the cluster's Python. Either the project is installed
on the cluster (``cluster.yaml`` setup commands: then ``working_dir=None``), or pass ``working_dir`` (e.g. ``.``,
the repository root) and Ray uploads it with the job.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import asdict

from cns_ray.config import BASE_DEFAULT_FIELDS, LearnerConfig

log = logging.getLogger(__name__)

# LearnerConfig fields pipelines.learn exposes as flags (name -> flag).
_CFG_FLAGS = {
    "steps": "--steps",
    "batch_size": "--batch-size",
    "token_lr": "--token-lr",
    "weight_lr": "--weight-lr",
    "reg_lambda": "--reg-lambda",
    "seed": "--seed",
    "checkpoint_every": "--checkpoint-every",
    "num_workers": "--workers",
    "cpus_per_worker": "--cpus-per-worker",
    "max_failures": "--max-failures",
    "resolution": "--resolution",
}


def learn_entrypoint(request, cfg: LearnerConfig, store_uri: str, base_model: str, run_name: str | None = None) -> str:
    """The shell command of a learning job: ``python -m pipelines.learn`` with every non-default setting."""
    req = asdict(request)
    args = ["python", "-m", "pipelines.learn", "--tenant", req["tenant"], "--concept", req["concept"]]
    args += ["--images", req["images"], "--class-word", req["class_word"], "--store", store_uri, "--base-model", base_model]
    if req.get("token"):
        args += ["--token", req["token"]]
    if req.get("parent_version") is not None:
        args += ["--parent-version", str(req["parent_version"])]
    for caption in req.get("captions") or []:
        args += ["--caption", caption]
    default = LearnerConfig()
    for name, flag in _CFG_FLAGS.items():
        value = getattr(cfg, name)
        # Base-model defaults (None) are resolved on the cluster; a value the user gave is always passed on.
        if value is not None and (name in BASE_DEFAULT_FIELDS or value != getattr(default, name)):
            args += [flag, str(value)]
    if cfg.use_gpu:
        args.append("--gpu")
    if not cfg.augment:
        args.append("--no-augment")
    if cfg.selection.select_ratio != default.selection.select_ratio:
        args += ["--select-ratio", str(cfg.selection.select_ratio)]
    if cfg.selection.budget is not None:
        args += ["--budget", str(cfg.selection.budget)]
    if run_name:
        args += ["--run-name", run_name]
    return shlex.join(args)


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def submit_learn_job(
    address: str,
    request,
    cfg: LearnerConfig,
    store_uri: str,
    base_model: str,
    working_dir: str | None = None,
    *,
    env_vars: dict[str, str] | None = None,
    run_name: str | None = None,
) -> str:
    """Submit ``python -m pipelines.learn ...`` to the Ray cluster at ``address`` (``http://HEAD:8265``).

    Returns the submission id. ``working_dir`` uploads that folder with the job (omit when the project is installed
    on the cluster). ``env_vars`` are set for the job (e.g. AWS settings for an S3 store).
    """
    from cns_ray.jobs.train import _absolute

    # A local store folder is meant as this machine's folder (a local head); use s3:// for a remote cluster.
    entrypoint = learn_entrypoint(request, cfg, _absolute(store_uri), base_model, run_name)
    runtime_env: dict = {}
    if working_dir:
        runtime_env["working_dir"] = working_dir
        runtime_env["excludes"] = [".venv", ".git", "cns-store", "**/__pycache__", "*.pt", "outputs"]
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env_vars or {})}
    runtime_env["env_vars"] = env
    job_id = _client(address).submit_job(
        entrypoint=entrypoint,
        runtime_env=runtime_env,
        metadata={"cns": "learn", "tenant": request.tenant, "concept": request.concept},
    )
    log.info("submitted %s to %s: %s", job_id, address, entrypoint)
    return job_id


def _info_dict(info) -> dict:
    return {
        "id": info.submission_id or info.job_id,
        "status": str(getattr(info.status, "value", info.status)),
        "entrypoint": info.entrypoint,
        "message": info.message,
        "metadata": dict(info.metadata or {}),
        "start_time": info.start_time,
        "end_time": info.end_time,
    }


def job_status(address: str, job_id: str) -> dict:
    """{id, status (PENDING|RUNNING|SUCCEEDED|FAILED|STOPPED), entrypoint, message, metadata, start/end time}."""
    return _info_dict(_client(address).get_job_info(job_id))


def list_jobs(address: str) -> list[dict]:
    return [_info_dict(i) for i in _client(address).list_jobs()]


def job_logs(address: str, job_id: str) -> str:
    return _client(address).get_job_logs(job_id)
