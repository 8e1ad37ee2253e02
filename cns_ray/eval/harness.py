"""The evaluation harness: learn each sequence continually with each method, measure, tabulate.

One (method, sequence) is a unit of work (:func:`run_sequence`): it needs only a base model, a metric model and a
scratch concept store, so units run in parallel on Ray (``pipelines.evaluate``) or in one process (tests).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from cns_ray import select
from cns_ray.config import SelectionConfig, StoreConfig
from cns_ray.eval import metrics
from cns_ray.eval.config import EvalConfig
from cns_ray.eval.generate import generate
from cns_ray.eval.methods import fused, learn_one, tenant_for
from cns_ray.world import concepts as wc
from cns_ray.world.scene import BACKGROUNDS, POSITIONS, SIZES, caption, sample_scenes

log = logging.getLogger(__name__)

CALIBRATION_SEED = 777


def calibration_prompts(n: int = 20) -> list[str]:
    """World captions used as the calibration prompts of general neurons (the base model's own domain)."""
    return [caption(s) for s in sample_scenes(n, seed=CALIBRATION_SEED)]


def eval_prompts(concept: wc.Concept, k: int, seed: int) -> list[str]:
    """``k`` single-concept prompts in contexts, deterministic."""
    rng = np.random.default_rng([seed, 99, sum(map(ord, concept.name))])
    out = []
    for _ in range(k):
        size, pos, bg = (list(d)[rng.integers(len(d))] for d in (SIZES, POSITIONS, BACKGROUNDS))
        out.append(wc.concept_caption(size, concept.token, pos, bg))
    return out


class _Measure:
    """Generation + metrics for one (base, metric model, config)."""

    def __init__(self, base, metric, cfg: EvalConfig):
        self.base, self.metric, self.cfg = base, metric, cfg
        self.refs = {}

    def references(self, c: wc.Concept) -> np.ndarray:
        if c.name not in self.refs:
            self.refs[c.name] = wc.reference_set(c, self.cfg.n_ref, self.cfg.seed, self.base.resolution)[0]
        return self.refs[c.name]

    def images(self, delta, tokens, prompt: str) -> np.ndarray:
        return generate(self.base, delta, tokens, prompt, self.cfg.n_gen, self.cfg.seed, self.cfg.gen_steps, self.cfg.guidance)

    def single(self, delta, tokens, c: wc.Concept) -> tuple[float, float, np.ndarray]:
        ia, ta, imgs = [], [], []
        for p in eval_prompts(c, self.cfg.prompts_per_concept, self.cfg.seed):
            g = self.images(delta, tokens, p)
            ia.append(metrics.image_alignment(self.metric, g, self.references(c)))
            ta.append(metrics.text_alignment(self.metric, g, wc.class_prompt(p, [c.token])))
            imgs.append(g)
        return float(np.mean(ia)), float(np.mean(ta)), np.concatenate(imgs)

    def multi(self, delta, tokens, prompt: str, left: wc.Concept, right: wc.Concept) -> tuple[float, float, np.ndarray]:
        g = self.images(delta, tokens, prompt)
        ia = 0.5 * (metrics.image_alignment(self.metric, g, self.references(left))
                    + metrics.image_alignment(self.metric, g, self.references(right)))
        ta = metrics.text_alignment(self.metric, g, wc.class_prompt(prompt, [left.token, right.token]))
        return ia, ta, g


def run_sequence(base, metric, cfg: EvalConfig, method: str, sequence: str, workdir: str | None = None) -> dict:
    """Learn ``sequence``'s concepts in order with ``method``; returns measurements and image rows."""
    from cns_ray.store import ConceptStore, delta_nbytes

    work = Path(workdir or tempfile.mkdtemp(prefix=f"cns-eval-{method}-{sequence}-"))
    store = ConceptStore(StoreConfig(uri=str(work / "store")))
    general = select.general_masks_local(base, calibration_prompts(), SelectionConfig(select_ratio=cfg.select_ratio))
    measure = _Measure(base, metric, cfg)
    names = cfg.concepts(sequence)
    concepts = [wc.get_concept(n) for n in names]
    right_after, seconds, learned, rows = {}, [], [], {}
    shapes = base.target_shapes()
    for c in concepts:
        folder = wc.write_reference_folder(c, work / "refs" / c.name, cfg.n_ref, cfg.seed)
        info = learn_one(base, store, cfg, method, sequence, c, str(folder), general)
        seconds.append(info["seconds"])
        state = store.load(info["tenant"], info["version"], shapes=shapes, base_id=base.base_id)
        learned.append(state)
        ia, _, imgs = measure.single(state.delta, state.tokens, c)
        right_after[c.name] = ia
        rows[f"{c.name} (after learning it)"] = imgs
        log.info("%s/%s: learned %s in %.1fs (loss %.4f), image alignment %.3f",
                 method, sequence, c.name, info["seconds"], info["final_loss"] or float("nan"), ia)
    if method == "fusion":
        delta, tokens = fused(learned)
        stored = sum(delta_nbytes(s.delta)["bytes"] for s in learned)
    else:
        delta, tokens = learned[-1].delta, learned[-1].tokens
        stored = delta_nbytes(delta)["bytes"]
    stored += len(tokens) * 4 * int(next(iter(tokens.values())).numel())  # token embeddings, fp32
    final_ia, final_ta = {}, {}
    for c in concepts:
        ia, ta, imgs = measure.single(delta, tokens, c)
        final_ia[c.name], final_ta[c.name] = ia, ta
        rows[f"{c.name} (end of sequence)"] = imgs
    multi_ia, multi_ta = [], []
    for prompt, a, b in wc.multi_prompts(sequence):
        if a in names and b in names and a != b:
            ia, ta, imgs = measure.multi(delta, tokens, prompt, wc.get_concept(a), wc.get_concept(b))
            multi_ia.append(ia)
            multi_ta.append(ta)
            rows[f"{a}+{b}"] = imgs
    return {
        "method": method,
        "sequence": sequence,
        "concepts": list(names),
        "single_image": final_ia,
        "single_text": final_ta,
        "right_after": right_after,
        "multi_image": multi_ia,
        "multi_text": multi_ta,
        "forgetting": metrics.forgetting(right_after, final_ia),
        "bytes_per_concept": stored / len(concepts),
        "learn_seconds": seconds,
        "tenant": tenant_for(method, sequence, names[-1]),
        "rows": {k: v.tolist() for k, v in rows.items()},
    }


def summarize(results: list[dict]) -> dict[str, dict[str, float]]:
    """Per method: the table's columns (means over concepts / prompts / sequences)."""
    table: dict[str, dict[str, float]] = {}
    for method in dict.fromkeys(r["method"] for r in results):
        rs = [r for r in results if r["method"] == method]

        def mean(key, rs=rs):
            vals = [v for r in rs for v in (r[key].values() if isinstance(r[key], dict) else r[key])]
            return float(np.mean(vals)) if vals else float("nan")

        table[method] = {
            "learned_image": mean("right_after"),
            "single_image": mean("single_image"),
            "single_text": mean("single_text"),
            "multi_image": mean("multi_image"),
            "multi_text": mean("multi_text"),
            "forgetting": float(np.mean([r["forgetting"] for r in rs])),
            "bytes_per_concept": float(np.mean([r["bytes_per_concept"] for r in rs])),
            "learn_seconds": mean("learn_seconds"),
        }
    return table


COLUMNS = (
    ("learned_image", "img right after"),
    ("single_image", "single img"), ("single_text", "single txt"), ("multi_image", "multi img"),
    ("multi_text", "multi txt"), ("forgetting", "forgetting"), ("bytes_per_concept", "bytes/concept"),
    ("learn_seconds", "learn s/concept"),
)


def format_table(table: dict[str, dict[str, float]]) -> str:
    """A Markdown table, methods as rows."""
    head = "| method | " + " | ".join(h for _, h in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for method, row in table.items():
        cells = []
        for key, _ in COLUMNS:
            v = row[key]
            cells.append(f"{v:,.0f}" if key == "bytes_per_concept" else f"{v:.1f}" if key == "learn_seconds" else f"{v:.3f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(results: list[dict], cfg: EvalConfig, extra: dict | None = None) -> dict:
    """table.md, results.json and one PNG grid per (method, sequence) under ``cfg.out_dir``."""
    import json

    from cns_ray.eval.generate import save_grid

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = summarize(results)
    text = format_table(table)
    (out / "table.md").write_text(text + "\n")
    grids = []
    for r in results:
        rows = [np.asarray(v, dtype=np.uint8) for v in r["rows"].values()]
        path = out / f"grid_{r['method']}_{r['sequence']}.png"
        save_grid(rows, path)
        (out / f"grid_{r['method']}_{r['sequence']}.txt").write_text("\n".join(r["rows"]) + "\n")
        grids.append(str(path))
    slim = [{k: v for k, v in r.items() if k != "rows"} for r in results]
    (out / "results.json").write_text(json.dumps({"config": cfg.to_dict(), "table": table, "runs": slim,
                                                  "written": time.strftime("%Y-%m-%d %H:%M:%S"), **(extra or {})}, indent=1))
    return {"table": table, "markdown": text, "grids": grids, "out_dir": str(out)}
