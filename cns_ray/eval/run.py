"""Running the evaluation: every (method, sequence) as a Ray task (or in-process), and the base-model sanity check."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import cns_ray.models.patch_vae  # noqa: F401  (diffusers folders saved with the patch autoencoder name its module)

from cns_ray.eval.config import EvalConfig

log = logging.getLogger(__name__)


def _load(cfg):
    import torch

    from cns_ray.eval.scoring import load_scorer
    from cns_ray.models import load_base_model

    torch.set_num_threads(1)
    base = load_base_model(cfg.base_model)
    return base, load_scorer(cfg.metric_model, cfg.n_ref, cfg.seed, base.resolution)


def _unit(cfg, work: tuple) -> dict:
    """One unit of work: ``("references",)`` or ``(method, sequence, seed)``."""
    from cns_ray.eval.harness import run_references, run_unit

    base, scorer = _load(cfg)
    return run_references(base, scorer, cfg) if work[0] == "references" else run_unit(base, scorer, cfg, *work)


def units_of(cfg: EvalConfig) -> list[tuple]:
    """The references unit, then every (method, sequence, learning seed)."""
    return [("references",)] + [(m, s, seed) for seed in cfg.train_seeds for s in cfg.sequences for m in cfg.methods]


def unit_key(cfg: EvalConfig, work: tuple, base_id: str) -> str:
    """A file name for one unit's result: what it ran and everything in ``cfg`` that changes it (not which other
    units the run holds, nor where it writes), and the base it ran on."""
    import hashlib

    d = cfg.to_dict()
    for k in ("out_dir", "methods", "sequences", "train_seeds"):
        d.pop(k)
    if work[0] == "cns_kv":
        from cns_ray.eval.methods import KV_PRESERVE

        d["kv_preserve"] = KV_PRESERVE
    digest = hashlib.sha256(json.dumps([d, base_id], sort_keys=True, default=str).encode()).hexdigest()[:12]
    return "_".join(map(str, work)) + f"-{digest}.json"


def run_eval(cfg: EvalConfig, *, local: bool = False, address: str | None = None, cpus_per_task: float = 0.5, say=log.info) -> dict:
    """Every unit of ``cfg``; returns write_outputs' summary (table, markdown, grids).

    Resumable: each finished unit is kept under ``out_dir/units/`` (keyed by the unit, the config and the base's
    ``base_id``), and a re-run with the same config skips it; so is a run that adds seeds or methods."""
    from cns_ray.eval.report import write_outputs
    from cns_ray.models import load_base_model

    units = units_of(cfg)
    cache = Path(cfg.out_dir) / "units"
    cache.mkdir(parents=True, exist_ok=True)
    base_id = load_base_model(cfg.base_model).base_id
    files = {w: cache / unit_key(cfg, w, base_id) for w in units}
    results = [json.loads(f.read_text()) for w, f in files.items() if f.exists()]
    todo = [w for w in units if not files[w].exists()]
    say(f"evaluating {len(units) - 1} (method, sequence, seed) runs + references: {cfg.methods} x {cfg.sequences} x "
        f"seeds {cfg.train_seeds}, {cfg.steps} steps/concept; {len(units) - len(todo)} already done ({cache})")
    t0 = time.monotonic()

    def keep(w: tuple, r: dict) -> None:
        tmp = files[w].with_suffix(".tmp")
        tmp.write_text(json.dumps(r))
        tmp.replace(files[w])  # atomic: a killed run leaves no half-written unit
        results.append(r)
        say(f"  done {'/'.join(map(str, w))} ({len(results)}/{len(units)}, {time.monotonic() - t0:.0f}s)")

    if local and todo:
        from cns_ray.eval.harness import run_references, run_unit

        base, scorer = _load(cfg)
        for w in todo:
            keep(w, run_references(base, scorer, cfg) if w[0] == "references" else run_unit(base, scorer, cfg, *w))
    elif todo:
        import ray

        from cns_ray.jobs.ray_env import init_ray

        init_ray(address)
        task = ray.remote(num_cpus=cpus_per_task)(_unit)
        refs = {task.remote(cfg, w): w for w in todo}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            keep(refs[done[0]], ray.get(done[0]))
    references = next(r for r in results if r["kind"] == "references")
    order = {w: i for i, w in enumerate(units)}
    runs = sorted((r for r in results if r["kind"] == "unit"), key=lambda r: order[(r["method"], r["sequence"], r["seed"])])
    return write_outputs(references, runs, cfg, {"wall_seconds": time.monotonic() - t0})


def run_base_only(cfg: EvalConfig, n: int, say=log.info, clip: bool = True) -> dict:
    """Base-model sanity (:func:`cns_ray.eval.sanity.base_sanity`) -> ``OUT/base_sanity.{json,png}``; ``clip=False``:
    the readout and the pixel check only (minutes, not tens of minutes, on CPU)."""
    from cns_ray.eval.generate import save_grid
    from cns_ray.eval.metric_model import load_metric_model
    from cns_ray.eval.sanity import base_sanity, format_sanity
    from cns_ray.models import load_base_model

    base = load_base_model(cfg.base_model)
    metric = load_metric_model(cfg.metric_model) if clip else None  # not loaded when it reads nothing
    r = base_sanity(base, metric, n=n, steps=cfg.gen_steps, seed=cfg.seed, clip=clip)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_grid([r["truth"][:10], r["images"][:10], r["truth"][10:20], r["images"][10:20]], out / "base_sanity.png")
    slim = {k: v for k, v in r.items() if k not in ("images", "truth")}
    (out / "base_sanity.json").write_text(json.dumps({"base_model": cfg.base_model, "base_id": base.base_id, **slim}, indent=1))
    say(format_sanity(r))
    say(f"grid: {out / 'base_sanity.png'} (rows: rendered truth, generated, rendered truth, generated)")
    return r
