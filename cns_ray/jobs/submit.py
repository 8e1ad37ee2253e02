"""Submit learning runs as Ray jobs (``ray job submit`` equivalent) through Ray's ``JobSubmissionClient``.

The job's entrypoint is ``python -m pipelines.learn ...`` run by the cluster's Python. Either the project is installed
on the cluster (``cluster.yaml`` setup commands: then ``working_dir=None``), or pass ``working_dir`` (e.g. ``.``,
the repository root) and Ray uploads it with the job, less :data:`WORKING_DIR_EXCLUDES`.

Secrets stay out of jobs: a job's ``runtime_env`` (its environment variables included) is readable by anyone with the
jobs API (``ray job list`` prints it). Secret-looking names (:func:`secret_env_names`) are refused unless the caller
explicitly allows them; give the cluster's nodes their credentials instead (an IAM instance profile, IRSA /
Kubernetes secrets: README, *On a cluster*).

Errors from the jobs API (nothing listening at the address, an unknown job id) become one :class:`JobsAPIError`.
"""

from __future__ import annotations

import logging
import re
import shlex
from dataclasses import asdict

from cns_ray.config import BASE_DEFAULT_FIELDS, LearnerConfig
from cns_ray.errors import CNSError, ConfigError

log = logging.getLogger(__name__)

WORKING_DIR_EXCLUDES = [
    ".git", ".venv", ".ci", "cns-store", "cns-out", "outputs", "docs", "tests", "benchmarks", "*.egg-info",
    "**/__pycache__", "*.pt", ".pytest_cache", "cns_ray/data/eval",
]
"""What a learning job does not need from the repository (Ray's ``excludes``, gitignore syntax): the quality harness's
shipped weights (``cns_ray/data/eval``) included; the base models in ``cns_ray/data/base`` travel."""
_SECRET = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|ACCESS_KEY|API_KEY|(^|_)KEY(_|$)", re.I)


class JobsAPIError(CNSError, RuntimeError):
    """The Ray jobs API could not do what was asked (unreachable, unknown job id, refused request)."""


def secret_env_names(env: dict[str, str]) -> list[str]:
    """Names in ``env`` that look like secrets (``AWS_SECRET_ACCESS_KEY``, ``AWS_ACCESS_KEY_ID``, ``*_TOKEN``, ...)."""
    return sorted(k for k in env if _SECRET.search(k))


def check_job_env(env: dict[str, str], allow_secrets: bool) -> None:
    """Refuse secret-looking variables for a job's runtime_env unless ``allow_secrets`` (then warn)."""
    secret = secret_env_names(env)
    if not secret:
        return
    if not allow_secrets:
        raise ConfigError(
            f"--env {', '.join(secret)}: secret-looking variables would be stored in the job's runtime_env, readable "
            "by anyone with the Ray jobs API (`ray job list` prints them). Give the cluster's nodes their own "
            "credentials (an IAM instance profile on EC2, IRSA or a Kubernetes secret on KubeRay: see README), or "
            "pass --allow-secret-env to send them anyway"
        )
    log.warning(
        "sending %s in the job's runtime_env (--allow-secret-env): anyone with the jobs API of this cluster can read them",
        ", ".join(secret),
    )

# LearnerConfig fields pipelines.learn exposes as flags (name -> flag).
_CFG_FLAGS = {
    "steps": "--steps",
    "batch_size": "--batch-size",
    "token_lr": "--token-lr",
    "weight_lr": "--weight-lr",
    "reg_lambda": "--reg-lambda",
    "preserve_lambda": "--preserve-lambda",
    "preserve_general": "--preserve-general",
    "seed": "--seed",
    "checkpoint_every": "--checkpoint-every",
    "num_workers": "--workers",
    "cpus_per_worker": "--cpus-per-worker",
    "max_failures": "--max-failures",
    "resolution": "--resolution",
    "method": "--method",
    "cones_ratio": "--cones-ratio",
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
    if cfg.cones_joint:
        args += ["--cones-joint", ",".join(cfg.cones_joint)]
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

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # ConnectionError, or RuntimeError from the version check
        raise JobsAPIError(
            f"cannot reach the Ray jobs API at {address} ({type(e).__name__}: {e}): start the cluster and forward its "
            "dashboard port (`ray dashboard cluster.yaml`), or give the right --address (http://HEAD:8265)"
        ) from e


def _call(address: str, job_id: str | None, what: str, fn):
    """Run ``fn(client)``; the jobs API's errors as one JobsAPIError (an unknown job id says how to list jobs)."""
    client = _client(address)
    try:
        return fn(client)
    except Exception as e:  # the SDK raises RuntimeError("Request failed with status code 404: ...") and others
        text = str(e)
        if job_id is not None and ("404" in text or "does not exist" in text):
            raise JobsAPIError(
                f"no job {job_id!r} at {address}: `cns jobs list --address {address}` lists the cluster's jobs"
            ) from e
        raise JobsAPIError(f"could not {what} at {address}: {type(e).__name__}: {text.splitlines()[0] if text else ''}") from e


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
    allow_secret_env: bool = False,
) -> str:
    """Submit ``python -m pipelines.learn ...`` to the Ray cluster at ``address`` (``http://HEAD:8265``).

    Returns the submission id. ``working_dir`` uploads that folder with the job (omit when the project is installed
    on the cluster). ``env_vars`` are set for the job (e.g. ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``); secret-looking
    ones are refused unless ``allow_secret_env`` (:func:`check_job_env`). A local ``images`` folder must exist: inside
    ``working_dir`` it travels with the upload (passed relative to it), elsewhere it is passed as an absolute path
    (seen only by a cluster on this machine).
    """
    from dataclasses import replace

    from cns_ray.jobs.train import _absolute

    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env_vars or {})}
    check_job_env(env, allow_secret_env)
    request = replace(request, images=job_images_path(request.images, working_dir))
    # A local store folder is meant as this machine's folder (a local head); use s3:// for a remote cluster.
    entrypoint = learn_entrypoint(request, cfg, _absolute(store_uri), base_model, run_name)
    runtime_env: dict = {"env_vars": env}
    if working_dir:
        runtime_env["working_dir"] = working_dir
        runtime_env["excludes"] = list(WORKING_DIR_EXCLUDES)
    metadata = {"cns": "learn", "tenant": request.tenant, "concept": request.concept}
    job_id = _call(address, None, "submit the job", lambda c: c.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, metadata=metadata))
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


def job_images_path(images: str, working_dir: str | None) -> str:
    """The ``--images`` a job gets: remote (``s3://``, ``store:``) as given; a local folder checked now (not 20 s later
    on the node), relative to ``working_dir`` when inside it (it travels with the upload), else absolute."""
    import os

    if "://" in images or images.startswith("store:"):
        return images
    path = os.path.abspath(os.path.expanduser(images))
    if not os.path.isdir(path):
        raise ConfigError(
            f"--images {images!r}: no such folder ({path}): give an existing folder of images, or s3://bucket/prefix"
        )
    if working_dir:
        root = os.path.abspath(working_dir)
        if os.path.commonpath([root, path]) == root:
            rel = os.path.relpath(path, root)
            if any(rel == e or rel.startswith(e + os.sep) for e in WORKING_DIR_EXCLUDES if "*" not in e):
                raise ConfigError(
                    f"--images {images!r} lies in {rel.split(os.sep)[0]}/, which the job upload leaves out: "
                    "move the images elsewhere in the working dir, or use s3://"
                )
            return rel
    log.warning("--images %s is a folder on this machine: only a Ray cluster on this machine can read it (use s3://)", path)
    return path


def job_status(address: str, job_id: str) -> dict:
    """{id, status (PENDING|RUNNING|SUCCEEDED|FAILED|STOPPED), entrypoint, message, metadata, start/end time}."""
    return _info_dict(_call(address, job_id, f"get job {job_id}", lambda c: c.get_job_info(job_id)))


def list_jobs(address: str) -> list[dict]:
    return [_info_dict(i) for i in _call(address, None, "list jobs", lambda c: c.list_jobs())]


def job_logs(address: str, job_id: str) -> str:
    return _call(address, job_id, f"get the logs of job {job_id}", lambda c: c.get_job_logs(job_id))


def stop_job(address: str, job_id: str) -> bool:
    """Ask the cluster to stop a job; True if it was running."""
    return bool(_call(address, job_id, f"stop job {job_id}", lambda c: c.stop_job(job_id)))


def follow_logs(address: str, job_id: str, write) -> None:
    """Stream a job's logs to ``write(chunk)`` as the job produces them, until it ends."""
    import asyncio

    async def tail(client) -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    job_status(address, job_id)  # an unknown id fails here, as one line
    _call(address, job_id, f"follow the logs of job {job_id}", lambda c: asyncio.run(tail(c)))
