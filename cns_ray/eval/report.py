"""The protocol's numbers: per-method aggregates (mean +- sd over learning seeds) against floors and ceilings, the
Markdown table, the forgetting-curve PNG, image grids and results.json."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from cns_ray.eval.config import EvalConfig

COLUMNS = (
    ("after", "right after"),
    ("end", "end of sequence"),
    ("forgetting", "forgetting (excl. last)"),
    ("kept", "gain kept"),
    ("pair", "two-concept"),
    ("placed", "both placed"),
    ("general_drop", "general drop"),
    ("bytes", "bytes/concept"),
    ("seconds", "learn s/concept"),
)


def primary_metric(references: dict) -> str:
    """The metric the targets are judged on: the readout when it scored, else toy-CLIP image alignment."""
    some = next(iter(references["concepts"].values()))["floor"]
    return "readout" if "readout" in some else "clip"


def unit_aggregates(u: dict, refs: dict, metric: str) -> dict[str, float]:
    """One (method, sequence, seed)'s numbers on ``metric``."""
    names = u["concepts"]
    after = [u["right_after"][n][metric] for n in names]
    end = [u["at_end"][n][metric] for n in names]
    floor = [refs["concepts"][n]["floor"][metric] for n in names]
    head = slice(0, max(1, len(names) - 1))  # every concept but the last (its "end" is its "right after")
    gain = float(np.sum(np.subtract(after, floor)[head]))
    pairs = list(u["pairs"].values())
    gkey = metric if metric in refs["general"] else "clip_text"
    before = refs["general"][gkey]
    return {
        "after": float(np.mean(after)),
        "end": float(np.mean(end)),
        "forgetting": float(np.mean(np.subtract(after, end)[head])) if len(names) > 1 else float("nan"),
        "kept": float(np.sum(np.subtract(end, floor)[head]) / gain) if len(names) > 1 and gain > 1e-6 else float("nan"),
        "pair": float(np.mean([p[metric] for p in pairs])) if pairs else float("nan"),
        "placed": float(np.mean([p["placed"] for p in pairs])) if pairs and "placed" in pairs[0] else float("nan"),
        "general_drop": float((before - u["general"][gkey]) / abs(before)) if before else float("nan"),
        "bytes": float(u["bytes_per_concept"]),
        "seconds": float(np.mean(u["learn_seconds"])),
    }


def _ms(values: list[float]) -> tuple[float, float]:
    v = [x for x in values if np.isfinite(x)]
    if not v:
        return float("nan"), float("nan")
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def summarize(references: dict, units: list[dict], metric: str | None = None) -> dict:
    """Per method and column: (mean, sd) over learning seeds of the per-seed means over sequences."""
    metric = metric or primary_metric(references)
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for method in dict.fromkeys(u["method"] for u in units):
        per_seed: dict[int, list[dict]] = {}
        for u in units:
            if u["method"] == method:
                per_seed.setdefault(u["seed"], []).append(unit_aggregates(u, references, metric))
        seed_means = [{k: float(np.nanmean([a[k] for a in aggs])) if any(np.isfinite(a[k]) for a in aggs)
                       else float("nan") for k in aggs[0]} for aggs in per_seed.values()]
        table[method] = {k: _ms([s[k] for s in seed_means]) for k, _ in COLUMNS}
        table[method]["seeds"] = (len(per_seed), 0.0)
    return table


def bounds(references: dict, metric: str) -> dict[str, dict[str, float]]:
    """Floor, ceiling and rendered truth: single concepts and two-concept prompts (means)."""
    out = {}
    for kind in ("floor", "ceiling", "truth"):
        single = [c[kind][metric] for c in references["concepts"].values()]
        pair = [p[kind][metric] for p in references["pairs"].values()]
        placed = [p[kind]["placed"] for p in references["pairs"].values() if "placed" in p[kind]]
        out[kind] = {"single": float(np.mean(single)), "pair": float(np.mean(pair)) if pair else float("nan"),
                     "placed": float(np.mean(placed)) if placed else float("nan")}
    return out


def _cell(key: str, m: float, s: float) -> str:
    if not np.isfinite(m):
        return "–"
    if key == "bytes":
        return f"{m:,.0f}"
    if key == "seconds":
        return f"{m:.1f}"
    if key in ("kept", "placed", "general_drop"):
        return f"{100 * m:.0f}% ± {100 * s:.0f}"
    return f"{m:.3f} ± {s:.3f}"


def format_table(table: dict, b: dict, metric: str) -> str:
    head = "| method | " + " | ".join(h for _, h in COLUMNS) + " |"
    lines = [f"metric: {metric}", "", head, "|" + "---|" * (len(COLUMNS) + 1)]
    for method, row in table.items():
        lines.append(f"| {method} | " + " | ".join(_cell(k, *row[k]) for k, _ in COLUMNS) + " |")
    for kind, label in (("floor", "floor: base, class word"), ("ceiling", "ceiling: base, full caption"),
                        ("truth", "rendered truth")):
        r = b[kind]
        cells = {"after": f"{r['single']:.3f}", "end": f"{r['single']:.3f}", "pair": f"{r['pair']:.3f}",
                 "placed": f"{100 * r['placed']:.0f}%" if np.isfinite(r["placed"]) else "–"}
        lines.append(f"| *{label}* | " + " | ".join(cells.get(k, "") for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def metric_table(references: dict, units: list[dict]) -> str:
    """Right after / end of sequence on every metric (means over everything), with floor and ceiling."""
    metrics_ = [k for k in next(iter(references["concepts"].values()))["floor"]]
    lines = ["| method | " + " | ".join(f"{m} after / end" for m in metrics_) + " |", "|" + "---|" * (len(metrics_) + 1)]
    for method in dict.fromkeys(u["method"] for u in units):
        us = [u for u in units if u["method"] == method]
        cells = []
        for m in metrics_:
            a = np.mean([u["right_after"][n][m] for u in us for n in u["concepts"]])
            e = np.mean([u["at_end"][n][m] for u in us for n in u["concepts"]])
            cells.append(f"{a:.3f} / {e:.3f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    for kind in ("floor", "ceiling", "truth"):
        cells = [f"{np.mean([c[kind][m] for c in references['concepts'].values()]):.3f}" for m in metrics_]
        lines.append(f"| *{kind}* | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curve_png(units: list[dict], references: dict, metric: str, path: Path) -> None:
    """The first concept's score after each later concept, per method (mean over sequences and seeds)."""
    from PIL import Image, ImageDraw

    methods = list(dict.fromkeys(u["method"] for u in units))
    curves = {m: np.mean([[d[metric] for d in u["first_curve"]] for u in units if u["method"] == m], axis=0)
              for m in methods}
    firsts = {u["concepts"][0] for u in units}
    floor = np.mean([references["concepts"][n]["floor"][metric] for n in firsts])
    ceil = np.mean([references["concepts"][n]["ceiling"][metric] for n in firsts])
    k = max(len(c) for c in curves.values())
    W, H, L, R, T, B = 640, 400, 60, 150, 30, 50
    lo, hi = min([floor, *[c.min() for c in curves.values()]]) - 0.05, max([ceil, *[c.max() for c in curves.values()]]) + 0.05
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)

    def xy(i, v):
        return L + (W - L - R) * (i / max(1, k - 1)), T + (H - T - B) * (1 - (v - lo) / (hi - lo))

    d.rectangle([L, T, W - R, H - B], outline="black")
    for i in range(k):
        x, _ = xy(i, lo)
        d.text((x - 3, H - B + 5), str(i + 1), fill="black")
    d.text((L, H - 20), "concepts learned so far (sequence position)", fill="black")
    for v in np.linspace(lo, hi, 5):
        _, y = xy(0, v)
        d.text((5, y - 5), f"{v:.2f}", fill="black")
    d.text((L, 8), f"first concept's {metric} score after each concept", fill="black")
    for v, label, col in ((floor, "floor", (150, 150, 150)), (ceil, "ceiling", (90, 90, 90))):
        _, y = xy(0, v)
        for x in range(L, W - R, 8):
            d.line([x, y, x + 4, y], fill=col)
        d.text((W - R + 5, y - 5), label, fill=col)
    palette = [(220, 40, 40), (40, 80, 230), (40, 160, 60), (240, 140, 20), (150, 60, 200), (0, 160, 160), (0, 0, 0), (230, 80, 160), (150, 100, 40)]
    for j, (m, c) in enumerate(curves.items()):
        col = palette[j % len(palette)]
        pts = [xy(i, v) for i, v in enumerate(c)]
        d.line(pts, fill=col, width=2)
        for x, y in pts:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=col)
        d.text((W - R + 5, T + 14 * j + 60), m, fill=col)
    img.save(path)


def write_outputs(references: dict, units: list[dict], cfg: EvalConfig, extra: dict | None = None) -> dict:
    """table.md, results.json, curve.png and PNG grids (first seed of each (method, sequence)) under ``cfg.out_dir``."""
    from cns_ray.eval.generate import save_grid

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metric = primary_metric(references)
    table = summarize(references, units, metric)
    b = bounds(references, metric)
    text = format_table(table, b, metric)
    # the same table on every other metric: the targets are judged on the primary one, but a metric whose ceiling
    # sits near its floor (the readout, where the base draws colours but not patterns) cannot show retention alone
    others = [k for k in ("pixel", "clip", "readout") if k != metric and k in next(iter(references["concepts"].values()))["floor"]]
    for k in others:
        text += "\n\n" + format_table(summarize(references, units, k), bounds(references, k), k)
    text += "\n\nEvery metric (means):\n\n" + metric_table(references, units)
    (out / "table.md").write_text(text + "\n")
    curve_png(units, references, metric, out / "curve.png")
    grids = []
    first_seed = min(u["seed"] for u in units)
    for r in [references] + [u for u in units if u["seed"] == first_seed]:
        name = "references" if r["kind"] == "references" else f"{r['method']}_{r['sequence']}"
        rows = [np.asarray(v, dtype=np.uint8) for v in r["rows"].values()]
        save_grid(rows, out / f"grid_{name}.png")
        (out / f"grid_{name}.txt").write_text("\n".join(r["rows"]) + "\n")
        grids.append(str(out / f"grid_{name}.png"))
    slim = [{k: v for k, v in r.items() if k != "rows"} for r in [references, *units]]
    (out / "results.json").write_text(json.dumps({
        "config": cfg.to_dict(), "metric": metric, "bounds": b,
        "table": {m: {k: list(v) for k, v in row.items()} for m, row in table.items()},
        "runs": slim, "written": time.strftime("%Y-%m-%d %H:%M:%S"), **(extra or {})}, indent=1))
    return {"table": table, "bounds": b, "metric": metric, "markdown": text, "grids": grids, "out_dir": str(out)}
