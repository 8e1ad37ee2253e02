"""Ray job entrypoint: build (or finish) the zero-shot synthesizer's concept library.

    python -m pipelines.build_library --n 200 --steps 100 --workers 2          # local Ray on 127.0.0.1
    ray job submit --working-dir . -- python -m pipelines.build_library --store s3://bucket/cns --n 200

Each library instance (a held-out world instance, never one of the named concepts) is learned from the base with
CNS as one Ray task and committed through the concept store under ``library/{base_id}/`` (not a tenant). Rerunning
skips finished entries; a library of another base is never touched. Prints a progress line per entry and one JSON
line with the summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from cns_ray.config import DEFAULT_BASE_MODEL, DEFAULT_STORE_URI
    from cns_ray.synth.build import LibraryConfig

    d = LibraryConfig()
    p = argparse.ArgumentParser(prog="python -m pipelines.build_library", description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default=os.environ.get("CNS_STORE", DEFAULT_STORE_URI), help="store folder or s3://...")
    p.add_argument("--base-model", default=os.environ.get("CNS_BASE_MODEL", DEFAULT_BASE_MODEL),
                   help="'tiny' (embedded), a diffusers folder every node sees, or s3://... of one")
    p.add_argument("--n", type=int, default=d.n, help="library instances (default %(default)s)")
    p.add_argument("--steps", type=int, default=d.steps, help="CNS steps per instance (default %(default)s)")
    p.add_argument("--images", type=int, default=d.n_images, help="reference images per instance (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="learning + reference seed (default %(default)s)")
    p.add_argument("--pool-seed", type=int, default=d.pool_seed, help="seed of the instance draw (default %(default)s)")
    p.add_argument("--workers", type=int, default=d.workers, help="Ray tasks in flight (default %(default)s; 0: in this process, no Ray)")
    p.add_argument("--cpus-per-task", type=float, default=d.cpus_per_task, help="CPUs per task (default %(default)s)")
    p.add_argument("--reg-lambda", type=float, default=d.reg_lambda, help="L_reg weight of every entry (default %(default)s)")
    p.add_argument("--metric-model", default=d.metric, help="image encoder for the reference embeddings (default toy)")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)

    from cns_ray.errors import CNSError
    from cns_ray.jobs.ray_env import init_ray
    from cns_ray.synth.build import LibraryConfig, build_library

    try:
        cfg = LibraryConfig(n=args.n, steps=args.steps, reg_lambda=args.reg_lambda, n_images=args.images, seed=args.seed,
                            pool_seed=args.pool_seed,
                            workers=args.workers, cpus_per_task=args.cpus_per_task, metric=args.metric_model)
        if cfg.workers > 0:
            init_ray(args.address)

        def progress(done: int, total: int, entry, elapsed: float) -> None:
            eta = elapsed / done * (total - done)
            print(f"[{done}/{total}] {entry.name} {entry.shape} {entry.look['colour']}/{entry.look['pattern']}: "
                  f"{entry.seconds:.1f} s, {entry.nnz} entries (elapsed {elapsed:.0f} s, eta {eta:.0f} s)", flush=True)

        summary = build_library(args.store, args.base_model, cfg, progress)
    except CNSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
