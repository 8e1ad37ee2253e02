"""Which concept instances can the base draw? The documented check behind the world's concept list.

    python -m pipelines.check_concepts [--base-model tiny] [--out docs/eval/drawable.json] [--library 0]

A concept is a combination of parts the base saw (class, colour, pattern, marking) but never as a whole. It is kept
for the protocol only if the base, given its *full caption* (``a large striped red and yellow circle with a green
dot at the center on a grey background``), draws it: the readout's agreement with the instance (6 attributes) at
least ``--min-readout`` and the exact palette found (recall x precision) at least ``--min-pixel``, averaged over the
protocol's contexts and seeds. The class-word floor is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def check(base, scorer, cfg, concepts, min_readout: float, min_pixel: float) -> list[dict]:
    from cns_ray.eval.harness import Measure, _class_only, _full

    m = Measure(base, scorer, cfg)
    rows = []
    for c in concepts:
        ceiling, _ = m.single(None, {}, c, _full)
        floor, _ = m.single(None, {}, c, _class_only)
        ok = ceiling.get("readout", 1.0) >= min_readout and ceiling.get("pixel", 1.0) >= min_pixel
        rows.append({"name": c.name, "instance": f"{c.shape}: {c.describe()}", "ceiling": ceiling, "floor": floor,
                     "drawable": bool(ok)})
    return rows


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(prog="python -m pipelines.check_concepts", description=__doc__.split("\n")[0])
    p.add_argument("--base-model", default="tiny")
    p.add_argument("--metric-model", default="toy")
    p.add_argument("--library", type=int, default=0, help="also check this many library instances")
    p.add_argument("--min-readout", type=float, default=0.67, help="readout agreement to keep (default %(default)s)")
    p.add_argument("--min-pixel", type=float, default=0.5, help="palette recall x precision to keep (default %(default)s)")
    p.add_argument("--prompts", type=int, default=2, help="contexts per concept (default %(default)s)")
    p.add_argument("--n-gen", type=int, default=4)
    p.add_argument("--out", default=None, help="JSON file to write")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    import cns_ray.models.patch_vae  # noqa: F401
    from cns_ray.eval.config import EvalConfig
    from cns_ray.eval.scoring import load_scorer
    from cns_ray.models import load_base_model
    from cns_ray.world import concepts as wc

    torch.set_num_threads(1)
    base = load_base_model(args.base_model)
    cfg = EvalConfig(base_model=args.base_model, prompts_per_concept=args.prompts, n_gen=args.n_gen)
    scorer = load_scorer(args.metric_model, cfg.n_ref, cfg.seed, base.resolution)
    concepts = list(wc.CONCEPTS) + (wc.library_concepts(args.library) if args.library else [])
    rows = check(base, scorer, cfg, concepts, args.min_readout, args.min_pixel)
    keys = list(rows[0]["ceiling"])
    print(f"base {args.base_model} ({base.base_id}); kept when readout >= {args.min_readout} and pixel >= {args.min_pixel}")
    print("| concept | instance | " + " | ".join(f"{k} full caption / class word" for k in keys) + " | drawable |")
    print("|---|---|" + "---|" * (len(keys) + 1))
    for r in rows:
        cells = " | ".join(f"{r['ceiling'][k]:.2f} / {r['floor'][k]:.2f}" for k in keys)
        print(f"| {r['name']} | {r['instance']} | {cells} | {'yes' if r['drawable'] else 'no'} |")
    print(f"drawable: {sum(r['drawable'] for r in rows)} of {len(rows)}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"base_id": base.base_id, "min_readout": args.min_readout,
                                              "min_pixel": args.min_pixel, "concepts": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
