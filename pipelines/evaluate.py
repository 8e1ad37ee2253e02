"""Ray job entrypoint: the paper's protocol on the toy world (``cns eval`` runs the same code).

    python -m pipelines.evaluate [--base-model tiny|FOLDER] [--metric-model toy|FOLDER] [--steps 300]
        [--sequences seq1 seq2 seq3] [--concepts N] [--methods cns naive ...] [--out eval-out] [--local]
    python -m pipelines.evaluate --base-only [--base-model ...]

Every (method, sequence) is one Ray task (sequences and methods in parallel; a sequence's concepts in order);
``--local`` runs them one after another in this process instead. Writes table.md, results.json and PNG grids.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from cns_ray.cli.eval_cmd import add_eval_args, config_from_args
    from cns_ray.eval.run import run_base_only, run_eval

    p = argparse.ArgumentParser(prog="python -m pipelines.evaluate", description=__doc__.split("\n")[0])
    add_eval_args(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cns_ray.errors import CNSError

    try:
        cfg = config_from_args(args)
        if args.base_only:
            run_base_only(cfg, args.sanity_n, say=print, clip=not args.readout_only)
            return 0
        summary = run_eval(cfg, local=args.local, address=args.address, cpus_per_task=args.cpus_per_task, say=print)
    except CNSError as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 2
    print(summary["markdown"])
    print(f"outputs in {summary['out_dir']}: table.md, results.json, {len(summary['grids'])} grids")
    return 0


if __name__ == "__main__":
    sys.exit(main())
