"""Ray job entrypoint: learn one concept for one tenant with Ray Train and commit it.

    python -m pipelines.learn --tenant T --concept NAME --images DIR --class-word W [--steps N] [--store URI]
        [--base-model SPEC] [--workers N] [--gpu] [--run-name NAME] ...

On a cluster: ``ray job submit --address http://HEAD:8265 --working-dir . -- python -m pipelines.learn ...`` (or
``cns submit learn ...``). Inside a Ray job it attaches to the job's cluster (``RAY_ADDRESS``); run by hand it starts
a private local Ray on 127.0.0.1. Prints progress lines and, last, ``committed version V``; exit code 0 on success,
2 on bad input, 1 when the run failed. Re-running with the same ``--run-name`` resumes that run's checkpoints.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from cns_ray.cli import add_common
    from cns_ray.cli.learn_cmds import add_learn_args, learn_request_and_config
    from cns_ray.errors import CNSError

    parser = argparse.ArgumentParser(prog="python -m pipelines.learn", description=__doc__.split("\n")[0])
    add_common(parser)
    add_learn_args(parser)
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a private local Ray)")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between progress lines (default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from cns_ray.jobs.ray_env import check_gpu_request, init_ray
    from cns_ray.jobs.train import resolve_learner_config, run_learning

    try:
        request, cfg = learn_request_and_config(args)
        cfg = resolve_learner_config(cfg, args.base_model)
        mode = init_ray(args.address)
        check_gpu_request(cfg.use_gpu, mode)
        what = f"{request.tenant}/{request.concept} ({cfg.steps} steps, {cfg.num_workers} worker(s))"
        print(f"ray: {mode}; learning {what}", flush=True)
        t0, last = time.monotonic(), [0.0]

        def progress(step: int, total: int, loss: float) -> None:
            now = time.monotonic()
            if now - last[0] >= args.every or step >= total:
                last[0] = now
                eta = (now - t0) / max(step, 1) * (total - step)
                print(f"step {step}/{total} loss {loss:.4f} eta {eta:.0f}s", flush=True)

        version = run_learning(request, cfg, args.store, args.base_model, run_name=args.run_name, status_cb=progress)
    except CNSError as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        from cns_ray.jobs.train import TrainingRunError

        return 1 if isinstance(e, TrainingRunError) else 2
    print(f"committed version {version} for tenant {request.tenant} ({time.monotonic() - t0:.1f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
