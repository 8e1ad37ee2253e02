"""``cns demo``: the whole system on the embedded defaults (see cns_ray/demo.py)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    from cns_ray.demo import DemoConfig

    p = sub.add_parser("demo", help="calibrate, select, learn 2 concepts x 2 tenants, generate before/after, serve over HTTP")
    p.add_argument("--out", default="cns-out", help="output folder for images and the demo store (default %(default)s)")
    p.add_argument("--store", default=None, help="store URI (default: OUT/store, emptied first)")
    p.add_argument("--base-model", default="tiny", help="base model (default %(default)s)")
    p.add_argument("--steps", type=int, default=DemoConfig.steps, help="learning steps per concept (default %(default)s)")
    p.add_argument("--actors", type=int, default=2, help="calibration scorer actors (default %(default)s)")
    p.add_argument("--reg-lambda", type=float, default=None, help="L_reg weight (default: the base's; tiny: 0.01)")
    p.add_argument("--preserve-lambda", type=float, default=None,
                   help="earlier concepts' key/value preservation (default: the base's; tiny: 3)")
    p.add_argument("--pairs", type=int, default=DemoConfig.pairs,
                   help="two-object references per concept, the concept beside a described partner (default %(default)s; 0: none)")
    p.add_argument("--no-serve", action="store_true", help="skip the HTTP endpoint part")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from cns_ray.demo import DemoConfig, run_demo

    run_demo(
        DemoConfig(
            out_dir=args.out,
            store=args.store,
            base_model=args.base_model,
            steps=args.steps,
            actors=args.actors,
            reg_lambda=args.reg_lambda,
            preserve_lambda=args.preserve_lambda,
            pairs=args.pairs,
            serve=not args.no_serve,
        )
    )
    return 0
