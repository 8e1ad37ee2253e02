"""Running the evaluation: every (method, sequence) as a Ray task (or in-process), and the base-model sanity check."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cns_ray.models.patch_vae  # noqa: F401  (diffusers folders saved with the patch autoencoder name its module)

from cns_ray.eval.config import EvalConfig

log = logging.getLogger(__name__)


def _unit(cfg, method: str, sequence: str) -> dict:
    import torch

    from cns_ray.eval.harness import run_sequence
    from cns_ray.eval.metric_model import load_metric_model
    from cns_ray.models import load_base_model

    torch.set_num_threads(1)
    return run_sequence(load_base_model(cfg.base_model), load_metric_model(cfg.metric_model), cfg, method, sequence)


def run_eval(cfg: EvalConfig, *, local: bool = False, address: str | None = None, cpus_per_task: float = 0.5, say=log.info) -> dict:
    """Every (method, sequence) of ``cfg``; returns write_outputs' summary (table, markdown, grids)."""
    from cns_ray.eval.harness import write_outputs

    units = [(m, s) for s in cfg.sequences for m in cfg.methods]
    say(f"evaluating {len(units)} (method, sequence) runs: {cfg.methods} x {cfg.sequences}, {cfg.steps} steps/concept")
    if local:
        from cns_ray.eval.harness import run_sequence
        from cns_ray.eval.metric_model import load_metric_model
        from cns_ray.models import load_base_model

        base, metric = load_base_model(cfg.base_model), load_metric_model(cfg.metric_model)
        results = []
        for m, s in units:
            results.append(run_sequence(base, metric, cfg, m, s))
            say(f"  done {m}/{s}")
    else:
        import ray

        from cns_ray.jobs.ray_env import init_ray

        init_ray(address)
        task = ray.remote(num_cpus=cpus_per_task)(_unit)
        refs = {task.remote(cfg, m, s): (m, s) for m, s in units}
        results, pending = [], list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            results.append(ray.get(done[0]))
            say(f"  done {'/'.join(refs[done[0]])} ({len(results)}/{len(units)})")
        order = {u: i for i, u in enumerate(units)}
        results.sort(key=lambda r: order[(r["method"], r["sequence"])])
    return write_outputs(results, cfg)


def run_base_only(cfg: EvalConfig, n: int, say=log.info) -> dict:
    from cns_ray.eval.generate import save_grid
    from cns_ray.eval.metric_model import load_metric_model
    from cns_ray.eval.sanity import base_sanity, format_sanity
    from cns_ray.models import load_base_model

    base = load_base_model(cfg.base_model)
    r = base_sanity(base, load_metric_model(cfg.metric_model), n=n, steps=cfg.gen_steps, seed=cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_grid([r["truth"][:10], r["images"][:10], r["truth"][10:20], r["images"][10:20]], out / "base_sanity.png")
    slim = {k: v for k, v in r.items() if k not in ("images", "truth")}
    (out / "base_sanity.json").write_text(json.dumps({"base_model": cfg.base_model, "base_id": base.base_id, **slim}, indent=1))
    say(format_sanity(r))
    say(f"grid: {out / 'base_sanity.png'} (rows: rendered truth, generated, rendered truth, generated)")
    return r
