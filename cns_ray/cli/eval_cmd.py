"""``cns eval``: the paper's protocol on the toy world (same code as ``python -m pipelines.evaluate``)."""

from __future__ import annotations

import argparse
import os


def register(sub) -> None:
    p = sub.add_parser("eval", help="learn concept sequences with CNS and baselines; report alignment, forgetting, bytes")
    add_eval_args(p)
    p.set_defaults(func=cmd_eval)


def add_eval_args(p: argparse.ArgumentParser) -> None:
    from cns_ray.eval.config import METHODS, EvalConfig

    d = EvalConfig()
    p.add_argument("--base-model", default=os.environ.get("CNS_BASE_MODEL", d.base_model))
    p.add_argument("--metric-model", default=d.metric_model, help="'toy' (shipped), a toy-clip folder or a CLIP folder")
    p.add_argument("--sequences", nargs="+", default=list(d.sequences))
    p.add_argument("--concepts", type=int, default=None, help="first N concepts of each sequence (default: all)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--steps", type=int, default=d.steps, help="learning steps per concept (default %(default)s)")
    p.add_argument("--token-lr", type=float, default=d.token_lr, help="Adam lr of the token embedding (default %(default)s)")
    p.add_argument("--weight-lr", type=float, default=d.weight_lr,
                   help="Adam lr of the sparse methods' weights (default %(default)s)")
    p.add_argument("--naive-weight-lr", type=float, default=d.naive_weight_lr,
                   help="Adam lr of naive fine-tuning of all K/V weights (default %(default)s)")
    p.add_argument("--reg-lambda", type=float, default=d.reg_lambda,
                   help="weight of L_reg for CNS, random and fusion (naive and cns_noreg use 0; default %(default)s)")
    p.add_argument("--select-ratio", type=float, default=d.select_ratio, help="top fraction per row (default %(default)s)")
    p.add_argument("--cones-steps", type=int, default=d.cones_steps,
                   help="cones: score-accumulation steps per concept (default %(default)s)")
    p.add_argument("--cones-ratio", type=float, default=d.cones_ratio,
                   help="cones: most of each K/V layer a concept shuts (default %(default)s)")
    p.add_argument("--pairs", type=int, default=d.pairs,
                   help="two-object references per concept, beside a described partner (default %(default)s)")
    p.add_argument("--pair-orders", choices=("sequence", "both"), default=d.pair_orders,
                   help="two-concept prompts: the earlier concept at the left, or both orders (default %(default)s)")
    p.add_argument("--n-gen", type=int, default=d.n_gen, help="images per prompt (default %(default)s)")
    p.add_argument("--gen-steps", type=int, default=d.gen_steps)
    p.add_argument("--prompts", type=int, default=d.prompts_per_concept, help="single-concept prompts per concept")
    p.add_argument("--seed", type=int, default=d.seed, help="generation and reference seed (default %(default)s)")
    p.add_argument("--train-seeds", type=int, nargs="+", default=list(d.train_seeds),
                   help="learning seeds: each (method, sequence) is learned once per seed (default %(default)s)")
    p.add_argument("--general-prompts", type=int, default=d.general_prompts,
                   help="world captions scored before/after a tenant's sequence (default %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="a few minutes: one sequence's first 3 concepts, 3 methods, 1 seed, few steps (mechanics only)")
    p.add_argument("--out", default=d.out_dir)
    p.add_argument("--local", action="store_true", help="no Ray: run every (method, sequence) in this process")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a private local Ray)")
    p.add_argument("--cpus-per-task", type=float, default=0.5)
    p.add_argument("--base-only", action="store_true", help="only the base-model sanity check (caption ranking)")
    p.add_argument("--sanity-n", type=int, default=40, help="captions for --base-only (default %(default)s)")
    p.add_argument("--readout-only", action="store_true",
                   help="--base-only without the toy CLIP's readings: the attribute readout and the pixel check (a "
                        "training checkpoint judged in ~2 minutes on one CPU thread instead of >15)")


def config_from_args(args: argparse.Namespace):
    from cns_ray.eval.config import EvalConfig, quick

    cfg = EvalConfig(
        base_model=args.base_model, metric_model=args.metric_model, sequences=tuple(args.sequences),
        concepts_per_sequence=args.concepts, methods=tuple(args.methods), steps=args.steps,
        token_lr=args.token_lr, weight_lr=args.weight_lr, naive_weight_lr=args.naive_weight_lr,
        reg_lambda=args.reg_lambda, select_ratio=args.select_ratio, n_gen=args.n_gen,
        gen_steps=args.gen_steps, prompts_per_concept=args.prompts, seed=args.seed, out_dir=args.out,
        train_seeds=tuple(args.train_seeds), general_prompts=args.general_prompts,
        cones_steps=args.cones_steps, cones_ratio=args.cones_ratio, pairs=args.pairs, pair_orders=args.pair_orders,
    )
    return quick(cfg) if args.quick else cfg


def cmd_eval(args: argparse.Namespace) -> int:
    from cns_ray.eval.run import run_base_only, run_eval

    cfg = config_from_args(args)
    if args.base_only:
        run_base_only(cfg, args.sanity_n, say=print, clip=not args.readout_only)
        return 0
    summary = run_eval(cfg, local=args.local, address=args.address, cpus_per_task=args.cpus_per_task, say=print)
    print(summary["markdown"])
    print(f"outputs in {summary['out_dir']}: table.md, results.json, {len(summary['grids'])} grids")
    return 0
