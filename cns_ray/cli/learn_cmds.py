"""``cns learn`` (local or attached Ray), ``cns submit learn`` (Ray job), ``cns jobs list|status|logs|stop``.

``add_learn_args`` / ``learn_request_and_config`` are shared with ``python -m pipelines.learn``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from cns_ray.cli import add_common

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def add_learn_args(p: argparse.ArgumentParser) -> None:
    """The learning request and its LearnerConfig as flags (defaults are LearnerConfig's, except steps, learning
    rates and resolution: those left out come from the base model, see cns_ray/models/defaults.py)."""
    from cns_ray.config import LearnerConfig, SelectionConfig

    d, s = LearnerConfig(), SelectionConfig()
    p.add_argument("--tenant", required=True, help="tenant name")
    p.add_argument("--concept", required=True, help="concept name (unique within the tenant)")
    p.add_argument(
        "--images", required=True, help="folder of png/jpg/webp images: local, s3://bucket/prefix, or store:REL"
    )
    p.add_argument("--class-word", required=True, help="what the concept is, e.g. dog (initialises the token)")
    p.add_argument("--token", default=None, help="placeholder token (default <CONCEPT>)")
    p.add_argument("--caption", action="append", default=None, help="a caption per image, in file-name order")
    p.add_argument("--parent-version", type=int, default=None, help="tenant version to build on (default: head)")
    base = "default: the base model's cns_defaults.json (tiny: %s), else the paper's (%s)"
    p.add_argument("--steps", type=int, default=None, help="optimisation steps (" + base % (d.steps, 500) + ")")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per step (default %(default)s)")
    p.add_argument("--token-lr", type=float, default=None, help="token embedding lr (" + base % (d.token_lr, 5e-4) + ")")
    p.add_argument("--weight-lr", type=float, default=None, help="concept-neuron lr (" + base % (d.weight_lr, 3e-5) + ")")
    p.add_argument("--reg-lambda", type=float, default=None, help="L_reg weight (" + base % (0.01, 1) + ")")
    p.add_argument("--preserve-lambda", type=float, default=None,
                   help="weight of the earlier concepts' key/value preservation, docs/method-notes.md (" + base % (3, 0) + ")")
    p.add_argument("--preserve-general", type=float, default=d.preserve_general,
                   help="weight of the same preservation on the base's calibration prompts (prompts without a concept; "
                        "opt-in, default %(default)s; docs/method-notes.md)")
    p.add_argument(
        "--resolution", type=int, default=None, help="training size in pixels (default: the base's cns_defaults.json, else native)"
    )
    p.add_argument("--no-augment", action="store_true", help="no random flip/crop")
    p.add_argument("--seed", type=int, default=d.seed, help="seed (default %(default)s)")
    p.add_argument("--method", choices=("cns", "cones"), default=d.method,
                   help="cns: token + values on concept neurons; cones: gradient concept neurons, stored as indices only "
                        "and shut when a prompt names the token (default %(default)s)")
    p.add_argument("--cones-ratio", type=float, default=d.cones_ratio,
                   help="cones: most of each layer's weights a concept may shut (default %(default)s)")
    p.add_argument("--cones-joint", default=None, metavar="A,B[,...]",
                   help="cones: refine these Cones concepts of the tenant jointly on --images of them together (the "
                        "paper's few-step joint fine-tuning, index-only; served when a prompt names all of them)")
    p.add_argument("--select-ratio", type=float, default=s.select_ratio, help="CNS select ratio (default %(default)s)")
    p.add_argument("--budget", type=float, default=None, help="cap concept neurons to this fraction of the targets")
    p.add_argument(
        "--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between checkpoints (default %(default)s)"
    )
    p.add_argument("--workers", type=int, default=d.num_workers, help="Ray Train workers (default %(default)s)")
    p.add_argument("--gpu", action="store_true", help="one GPU per Train worker")
    p.add_argument(
        "--cpus-per-worker", type=float, default=d.cpus_per_worker, help="CPUs per Train worker (default %(default)s)"
    )
    p.add_argument("--max-failures", type=int, default=d.max_failures, help="worker restarts allowed (default %(default)s)")
    p.add_argument(
        "--run-name", default=None, help="Ray Train run name; reusing one resumes that run's checkpoints (default: new)"
    )


def learn_request_and_config(args: argparse.Namespace):
    """(ConceptRequest, LearnerConfig) from parsed ``add_learn_args`` flags. Settings the user left out stay None
    in the config (the base model's defaults: ``LearnerConfig.with_base_defaults``, applied where the run starts)."""
    from cns_ray.config import LearnerConfig, SelectionConfig
    from cns_ray.learn import ConceptRequest

    request = ConceptRequest(
        tenant=args.tenant,
        concept=args.concept,
        class_word=args.class_word,
        images=args.images,
        token=args.token,
        captions=args.caption,
        parent_version=args.parent_version,
    )
    cfg = LearnerConfig(
        steps=args.steps,
        token_lr=args.token_lr,
        weight_lr=args.weight_lr,
        reg_lambda=args.reg_lambda,
        preserve_lambda=args.preserve_lambda,
        preserve_general=args.preserve_general,
        batch_size=args.batch_size,
        resolution=args.resolution,
        augment=not args.no_augment,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        num_workers=args.workers,
        use_gpu=args.gpu,
        cpus_per_worker=args.cpus_per_worker,
        max_failures=args.max_failures,
        selection=SelectionConfig(select_ratio=args.select_ratio, budget=args.budget),
        method=args.method,
        cones_ratio=args.cones_ratio,
        cones_joint=tuple(n.strip() for n in (args.cones_joint or "").split(",") if n.strip()),
    )
    return request, cfg


def _address_arg(p: argparse.ArgumentParser, *, dashboard: bool) -> None:
    if dashboard:
        p.add_argument(
            "--address",
            default=os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("CNS_RAY_JOBS_ADDRESS"),
            required=not (os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("CNS_RAY_JOBS_ADDRESS")),
            help="Ray dashboard/jobs address, e.g. http://HEAD:8265 (env RAY_API_SERVER_ADDRESS)",
        )
    else:
        p.add_argument(
            "--address",
            default=None,
            help="Ray cluster to attach to (e.g. auto, HOST:6379); default: RAY_ADDRESS, else a private local Ray",
        )


def register(sub) -> None:
    p = sub.add_parser("learn", help="learn a concept for a tenant (Ray Train on the local or attached Ray)")
    add_common(p)
    add_learn_args(p)
    _address_arg(p, dashboard=False)
    p.add_argument("--queue", action="store_true", help="go through the cluster's per-tenant scheduler actor")
    p.add_argument("--no-wait", action="store_true", help="with --queue: print the job id and return")
    p.set_defaults(func=cmd_learn)

    p = sub.add_parser("submit", help="submit a job to a Ray cluster (ray job submit)")
    ssub = p.add_subparsers(dest="submit_kind", required=True, metavar="KIND")
    p = ssub.add_parser("learn", help="submit `python -m pipelines.learn ...` as a Ray job")
    add_common(p)
    add_learn_args(p)
    _address_arg(p, dashboard=True)
    p.add_argument(
        "--working-dir",
        default=None,
        help="upload this folder with the job (e.g. . = the repository); default: the project installed on the cluster",
    )
    p.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE",
        help="environment for the job (e.g. AWS_DEFAULT_REGION); secret-looking names are refused: see --allow-secret-env",
    )
    p.add_argument(
        "--allow-secret-env", action="store_true",
        help="send secret-looking --env values anyway (anyone with the jobs API can read them; prefer node IAM roles)",
    )
    p.add_argument("--wait", action="store_true", help="stream the job's logs until it ends; exit 1 unless it succeeded")
    p.set_defaults(func=cmd_submit_learn)

    p = sub.add_parser("jobs", help="Ray jobs on a cluster: list, status, logs, stop")
    jsub = p.add_subparsers(dest="jobs_cmd", required=True, metavar="CMD")
    for name, helptext in (("list", "list jobs"), ("status", "one job's status"), ("logs", "one job's logs"),
                           ("stop", "stop a job")):
        q = jsub.add_parser(name, help=helptext)
        _address_arg(q, dashboard=True)
        if name != "list":
            q.add_argument("job_id")
        if name == "logs":
            q.add_argument("--follow", action="store_true", help="stream the logs as they come, until the job ends")
        q.set_defaults(func=cmd_jobs)


def cmd_learn(args) -> int:
    from cns_ray.jobs.ray_env import check_gpu_request, init_ray
    from cns_ray.jobs.train import resolve_learner_config
    from cns_ray.learn import tqdm_progress

    request, cfg = learn_request_and_config(args)
    cfg = resolve_learner_config(cfg, args.base_model)
    check_gpu_request(cfg.use_gpu, init_ray(args.address))
    if args.queue:
        return _learn_queued(args, request, cfg)
    from cns_ray.jobs.train import run_learning

    bar = tqdm_progress(f"{request.tenant}/{request.concept}")
    try:
        version = run_learning(
            request, cfg, args.store, args.base_model, run_name=args.run_name, status_cb=bar
        )
    finally:
        bar.close()
    print(f"tenant {request.tenant}: learned {request.concept} -> version {version}")
    return 0


def _learn_queued(args, request, cfg) -> int:
    from dataclasses import asdict

    import ray

    from cns_ray.jobs.scheduler import get_or_create_scheduler
    from cns_ray.learn import tqdm_progress

    sched = get_or_create_scheduler(args.store, args.base_model)
    job_id = ray.get(sched.submit.remote(asdict(request), cfg.to_dict()))
    print(f"job {job_id} queued for {request.tenant}/{request.concept}")
    if args.no_wait:
        return 0
    bar = tqdm_progress(f"{request.tenant}/{request.concept}")
    try:
        while True:
            st = ray.get(sched.wait.remote(job_id, 1.0))
            if st["total"] and st["step"]:
                bar(st["step"], st["total"], st["loss"] or 0.0)
            if st["state"] in ("succeeded", "failed"):
                break
    finally:
        bar.close()
    if st["state"] == "failed":
        print(f"error: job {job_id} failed: {st['error']}", file=sys.stderr)
        return 1
    print(f"tenant {request.tenant}: learned {request.concept} -> version {st['version']}")
    return 0


def cmd_submit_learn(args) -> int:
    from cns_ray.errors import ConfigError
    from cns_ray.jobs.submit import submit_learn_job

    request, cfg = learn_request_and_config(args)
    env = {}
    for kv in args.env:
        if "=" not in kv:
            raise ConfigError(f"--env {kv!r} must be KEY=VALUE")
        k, v = kv.split("=", 1)
        env[k] = v
    job_id = submit_learn_job(
        args.address, request, cfg, args.store, args.base_model, args.working_dir, env_vars=env, run_name=args.run_name,
        allow_secret_env=args.allow_secret_env,
    )
    print(job_id, flush=True)
    if not args.wait:
        print(f"follow it with: cns jobs logs --address {args.address} {job_id} --follow", file=sys.stderr)
        return 0
    st = _follow(args.address, job_id)
    print(f"job {job_id}: {st['status']}", file=sys.stderr)
    return 0 if st["status"] == "SUCCEEDED" else 1


def _follow(address: str, job_id: str, poll_s: float = 1.0) -> dict:
    """Stream the job's logs as they come; then its final status (the stream may end a moment before it)."""
    from cns_ray.jobs.submit import follow_logs, job_status

    follow_logs(address, job_id, lambda chunk: print(chunk, end="", flush=True))
    while (st := job_status(address, job_id))["status"] not in TERMINAL:
        time.sleep(poll_s)
    return st


def cmd_jobs(args) -> int:
    from cns_ray.jobs.submit import job_logs, job_status, list_jobs, stop_job

    if args.jobs_cmd == "list":
        jobs = list_jobs(args.address)
        for j in sorted(jobs, key=lambda j: j["start_time"] or 0):
            meta = j["metadata"]
            what = f"{meta.get('tenant', '')}/{meta.get('concept', '')}" if meta.get("cns") else j["entrypoint"][:60]
            print(f"{j['id']:<28} {j['status']:<10} {what}")
        return 0
    if args.jobs_cmd == "status":
        print(json.dumps(job_status(args.address, args.job_id), indent=2, default=str))
        return 0
    if args.jobs_cmd == "stop":
        stopped = stop_job(args.address, args.job_id)
        print(f"job {args.job_id}: {'stop requested' if stopped else 'was not running'}")
        return 0
    if args.follow:
        st = _follow(args.address, args.job_id)
        print(f"job {args.job_id}: {st['status']}", file=sys.stderr)
        return 0
    print(job_logs(args.address, args.job_id))
    return 0
