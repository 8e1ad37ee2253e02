"""Ray job entrypoint: general neurons of a base model, scored by scorer actors, cached in the store.

    ray job submit --working-dir . -- python -m pipelines.calibrate --store s3://bucket/cns --base-model s3://... --actors 2

Under ``ray job submit`` it runs on the cluster (``RAY_ADDRESS`` is set); run directly, it starts a local Ray
bound to 127.0.0.1. Prints one JSON line with the result summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from cns_ray.config import DEFAULT_BASE_MODEL, DEFAULT_STORE_URI

    p = argparse.ArgumentParser(prog="python -m pipelines.calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default=os.environ.get("CNS_STORE", DEFAULT_STORE_URI), help="store folder or s3://...")
    p.add_argument("--base-model", default=os.environ.get("CNS_BASE_MODEL", DEFAULT_BASE_MODEL),
                   help="'tiny' (embedded; 'tiny-random' for random test weights), a diffusers folder every node "
                        "sees, or s3://... of one")
    p.add_argument("--actors", type=int, default=2, help="scorer actors (0 = score in the driver; default 2)")
    p.add_argument("--prompts", default=None,
                   help="text file, one calibration prompt per line (default: the base model's own, else built-in)")
    p.add_argument("--select-ratio", type=float, default=0.1, help="top fraction of each row (default 0.1)")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)

    from cns_ray import neurons
    from cns_ray.config import SelectionConfig, StoreConfig
    from cns_ray.errors import CNSError
    from cns_ray.jobs.calibrate import general_masks_info
    from cns_ray.jobs.ray_env import init_ray
    from cns_ray.models import load_base_model
    from cns_ray.select import load_prompts
    from cns_ray.store import ConceptStore

    try:
        cfg = SelectionConfig(select_ratio=args.select_ratio)
        store = ConceptStore(StoreConfig(uri=args.store))
        if args.actors > 0 and args.address:
            init_ray(args.address)  # else init_ray() runs on a cache miss only
        base = load_base_model(args.base_model)
        prompts = load_prompts(args.prompts, base)
        res = general_masks_info(
            base, store, cfg, prompts, args.actors, lambda d, t: logging.info("shard %d/%d scored", d, t)
        )
    except CNSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({
        "base_id": res.base_id,
        "key": res.key,
        "from_cache": res.from_cache,
        "num_prompts": res.num_prompts,
        "shards": res.shards,
        "seconds": round(res.seconds, 3),
        "general_fraction": neurons.mask_fraction(res.masks),
        "layers": neurons.layer_fractions(res.masks),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
