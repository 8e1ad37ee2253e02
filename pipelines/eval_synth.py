"""Evaluate zero-shot synthesis on held-out instances: synthesized vs nearest-neighbour vs blend vs trained CNS
(upper bound) vs the class-word base (floor), several seeds, seconds per concept. One Ray task per concept.

    python -m pipelines.eval_synth --out docs/eval/synth                 # 6 named concepts x 3 seeds
    python -m pipelines.eval_synth --quick                               # 2 concepts, 1 seed, short CNS

Writes ``results.json`` (every row + the summary) and ``table.md`` to ``--out``; prints the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from cns_ray.config import DEFAULT_BASE_MODEL, DEFAULT_STORE_URI
    from cns_ray.synth.evaluate import SynthEvalConfig

    d = SynthEvalConfig()
    p = argparse.ArgumentParser(prog="python -m pipelines.eval_synth", description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default=os.environ.get("CNS_STORE", DEFAULT_STORE_URI), help="store holding the library")
    p.add_argument("--base-model", default=os.environ.get("CNS_BASE_MODEL", DEFAULT_BASE_MODEL))
    p.add_argument("--synthesizer", default=None, help="synthesizer folder (default: the shipped one)")
    p.add_argument("--concepts", nargs="+", default=list(d.concepts), help="held-out named concepts")
    p.add_argument("--seeds", type=int, default=d.seeds)
    p.add_argument("--cns-steps", type=int, default=d.cns_steps)
    p.add_argument("--refine-steps", type=int, default=d.refine_steps)
    p.add_argument("--images-per-prompt", type=int, default=d.images_per_prompt)
    from cns_ray.synth.build import LibraryConfig

    p.add_argument("--reg-lambda", type=float, default=LibraryConfig.reg_lambda,
                   help="L_reg weight of the cns and refine rows (default %(default)s; use the library's)")
    p.add_argument("--methods", nargs="+", default=list(d.methods))
    p.add_argument("--start-t", type=float, default=d.start_t, help="flow_from_blend: where the blend starts on the path (default %(default)s)")
    p.add_argument("--start-temperature", type=float, default=d.start_temperature, help="flow_from_blend's noise scale (default %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="concepts evaluated at once (Ray tasks; 0: one after the other in this process, no Ray)")
    p.add_argument("--quick", action="store_true", help="2 concepts, 1 seed, 60 CNS steps, 20 refine steps")
    p.add_argument("--out", default="docs/eval/synth", help="folder for results.json and table.md")
    p.add_argument("--append", action="store_true",
                   help="keep the rows of --out's results.json for methods not run now (e.g. run floor and cns first, "
                        "while the library builds, then the rest)")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    return p.parse_args(argv)


def _task(base_spec: str, synth_dir: str | None, library, name: str, cfg, learner_cfg: dict) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    from cns_ray.config import LearnerConfig
    from cns_ray.eval.scoring import load_scorer
    from cns_ray.models import load_base_model
    from cns_ray.models.defaults import base_defaults
    from cns_ray.select import general_masks_local, load_prompts
    from cns_ray.synth.evaluate import eval_concept
    from cns_ray.synth.synthesizer import Synthesizer, default_synth_folder

    base = load_base_model(base_spec)
    needs_synth = set(cfg.methods) - {"floor", "cns"}
    synth = Synthesizer.load(synth_dir or default_synth_folder()) if needs_synth else None
    scorer = load_scorer(synth.meta.get("metric", "toy") if synth else "toy", cfg.n_refs, 0, base.resolution)
    lcfg = LearnerConfig.from_dict(learner_cfg)
    general = general_masks_local(base, load_prompts(base=base), lcfg.selection)
    return eval_concept(base, synth, scorer.metric, scorer, library, name, cfg, lcfg, general,
                        base_defaults(base_spec).guidance_scale)


def table(summary: dict, cfg) -> str:
    names = {"floor": "class-word base (floor)", "synthesized": "synthesized (CNS neurons)",
             "synthesized_union": "synthesized (its own coordinates)", "nearest": "nearest library concept",
             "blend": f"blend of {cfg.blend_k} nearest", "kernel": "kernel-ridge combination of the library", "cns": f"trained CNS, {cfg.cns_steps} steps (upper bound)",
             "refine": f"synthesized + {cfg.refine_steps} CNS steps",
             "synthesized_norm": "synthesized, at the library's median norms",
             "synthesized_t1": "synthesized, temperature 1 (a draw)",
             "flow_from_blend": "synthesized from the blend's latent"}
    lines = ["| method | image alignment (toy CLIP) | gain kept | readout | pixel | s/concept |", "|---|---|---|---|---|---|"]
    for m in cfg.methods:
        r = summary.get(m)
        if r is None:
            continue
        kept = r.get("clip_gain_kept")
        lines.append(f"| {names[m]} | {r['clip']:.3f} ± {r['clip_sd']:.3f} | {'' if kept is None or m in ('floor', 'cns') else f'{kept:.0%}'} "
                     f"| {r.get('readout', float('nan')):.3f} ± {r.get('readout_sd', 0):.3f} "
                     f"| {r.get('pixel', float('nan')):.3f} ± {r.get('pixel_sd', 0):.3f} | {r['seconds']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)

    from cns_ray.config import LearnerConfig
    from cns_ray.errors import CNSError
    from cns_ray.jobs.ray_env import init_ray
    from cns_ray.jobs.train import resolve_learner_config
    from cns_ray.models import load_base_model
    from cns_ray.synth.evaluate import METHODS, SynthEvalConfig, summarize
    from cns_ray.synth.library import ConceptLibrary, library_arrays
    from cns_ray.synth.synthesizer import Synthesizer, default_synth_folder

    try:
        cfg = SynthEvalConfig(concepts=tuple(args.concepts), seeds=args.seeds, cns_steps=args.cns_steps,
                              refine_steps=args.refine_steps, images_per_prompt=args.images_per_prompt,
                              methods=tuple(args.methods), start_t=args.start_t, start_temperature=args.start_temperature)
        if args.quick:
            cfg = SynthEvalConfig(concepts=cfg.concepts[:2], seeds=1, cns_steps=60, refine_steps=20,
                                  images_per_prompt=2, methods=cfg.methods)
        t0 = time.perf_counter()
        base = load_base_model(args.base_model)
        entries, x, cond, synth_meta = [], None, None, {}
        if set(cfg.methods) - {"floor", "cns"}:
            synth = Synthesizer.load(args.synthesizer or default_synth_folder())
            synth.check_base(base.base_id)
            synth_meta = synth.meta
            entries, x, cond, _ = library_arrays(base, ConceptLibrary(args.store, base.base_id), coords=synth.coords)
        held = [n for n in cfg.concepts if n in {e.name for e in entries}]
        if held:
            raise CNSError(f"concepts {held} are in the library: evaluate on held-out instances only")
        lcfg = resolve_learner_config(LearnerConfig(steps=None, token_lr=None, weight_lr=None, reg_lambda=args.reg_lambda),
                                      args.base_model)
        library = (x, cond, [e.name for e in entries])
        if args.workers == 0:  # in this process, one concept after the other (no Ray)
            rows = [r for n in cfg.concepts for r in _task(args.base_model, args.synthesizer, library, n, cfg, lcfg.to_dict())]
        else:
            import ray

            init_ray(args.address, num_cpus=args.workers)  # a new local Ray runs --workers concepts at once
            lib_ref = ray.put(library)
            task = ray.remote(num_cpus=1)(_task)
            refs = [task.remote(args.base_model, args.synthesizer, lib_ref, n, cfg, lcfg.to_dict()) for n in cfg.concepts]
            rows = [r for part in ray.get(refs) for r in part]
    except CNSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"base_id": base.base_id, "library_size": len(entries), "synthesizer": synth_meta, "config": cfg.__dict__,
            "seconds": round(time.perf_counter() - t0, 1)}
    if args.append and (out / "results.json").exists():
        old = json.loads((out / "results.json").read_text())
        if old["meta"]["base_id"] != base.base_id:
            print(f"error: {out / 'results.json'} was measured on base {old['meta']['base_id']}, not {base.base_id}: "
                  "drop --append", file=sys.stderr)
            return 2
        rows = [r for r in old["rows"] if r["method"] not in cfg.methods] + rows
        meta = {**old["meta"], **{k: v for k, v in meta.items() if k != "config" and (v or k == "seconds")},
                "runs": [*old["meta"].get("runs", [old["meta"].get("config")]), cfg.__dict__]}
    summary = summarize(rows)
    shown = replace(cfg, methods=tuple(m for m in METHODS if m in summary))
    text = table(summary, shown)
    (out / "results.json").write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1, default=str))
    (out / "table.md").write_text(text + "\n")
    print(text)
    print(json.dumps({"out": str(out), "seconds": meta["seconds"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
