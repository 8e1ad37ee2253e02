"""Same-class user concepts on ``tiny``: do the selection variants keep them apart? (docs/method-notes.md)

One tenant learns ``kiki`` then ``boba`` (two PIL-drawn circles with the same caption templates, as in
tests/unit/learn/test_user_concepts.py); prints kiki's palette fit right after it and after boba, boba's, the floor,
and the overlap |A n B| / |A| of their neuron sets, as one JSON line (also written to ``--out``).

    .venv/bin/python benchmarks/bench_same_class.py VARIANT LAMBDA [--steps 150] [--seed 0] [--out DIR]
    .venv/bin/python benchmarks/bench_same_class.py --table DIR

VARIANT: ``current`` (today's selection), ``exclusive`` (SelectionConfig.exclusive), ``token``
(SelectionConfig.token_warmup=25), ``tokenonly`` (today's selection, weight_lr 0: the token alone).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import time
from pathlib import Path

PROMPT = "a large <{}> circle at the center on a grey background"


def run(variant: str, lam: float, steps: int, seed: int, warmup: int, out: Path, preserve: float = 0.0) -> dict:
    import torch

    torch.set_num_threads(1)
    from cns_ray.eval.drawn import BOBA, KIKI, palette_fit as _fit, write_folder as _folder  # test_user_concepts' own

    from cns_ray.config import LearnerConfig, SelectionConfig, StoreConfig
    from cns_ray.eval.generate import generate
    from cns_ray.eval.harness import calibration_prompts
    from cns_ray.learn import CNSLearner, ConceptRequest
    from cns_ray.models import TINY, load_base_model
    from cns_ray.select import general_masks_local
    from cns_ray.store import ConceptStore

    base = load_base_model(TINY)
    sel = SelectionConfig(exclusive=variant == "exclusive", token_warmup=warmup if variant == "token" else 0)
    cfg = LearnerConfig(steps=steps, batch_size=4, augment=False, seed=seed, reg_lambda=lam, selection=sel,
                        preserve_lambda=preserve,
                        **({"weight_lr": 0.0} if variant == "tokenonly" else {}))
    general = general_masks_local(base, calibration_prompts(), SelectionConfig())
    tmp = Path(tempfile.mkdtemp(prefix="same-class-"))
    store = ConceptStore(StoreConfig(uri=str(tmp / "store")))

    def gen(prompt, state):
        return generate(base, state.delta if state else None, state.tokens if state else {}, prompt, 4, 0, 20, 4.0)

    res: dict = {"variant": variant + (f"+preserve{preserve:g}" if preserve else ""), "lambda": lam, "steps": steps, "seed": seed, "warmup": sel.token_warmup}
    neurons: dict[str, dict[str, set[int]]] = {}
    t0 = time.time()
    for name, look in (KIKI, BOBA):
        req = ConceptRequest("acme", name, "circle", str(_folder(tmp, name, look)), token=f"<{name}>")
        learner = CNSLearner(base, store, req, cfg, general)
        while learner.step_index < learner.total_steps:
            learner.step()
        learner.commit()
        neurons[name] = {n: set(i.tolist()) for n, i in learner.indices.items()}
        res[f"{name}_nnz"] = sum(len(v) for v in neurons[name].values())
        state = store.load("acme", shapes=base.target_shapes(), base_id=base.base_id)
        if name == "kiki":
            res["kiki_after_kiki"] = _fit(gen(PROMPT.format("kiki"), state), KIKI[1])
    res["kiki_after_boba"] = _fit(gen(PROMPT.format("kiki"), state), KIKI[1])
    res["boba"] = _fit(gen(PROMPT.format("boba"), state), BOBA[1])
    floor = gen("a large circle at the center on a grey background", None)
    res["floor_kiki"], res["floor_boba"] = _fit(floor, KIKI[1]), _fit(floor, BOBA[1])
    a, b = neurons["kiki"], neurons["boba"]
    res["overlap_AB_over_A"] = sum(len(a[n] & b.get(n, set())) for n in a) / max(1, res["kiki_nnz"])
    res["seconds"] = round(time.time() - t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"res_{res['variant']}_{lam}_{steps}_s{seed}.json").write_text(json.dumps(res, indent=1))
    return res


def table(folder: Path) -> str:
    rows = [json.loads(f.read_text()) for f in sorted(folder.glob("res_*.json"))]
    groups = collections.defaultdict(list)
    for d in rows:
        groups[(d["variant"], d["lambda"])].append(d)

    def fmt(xs):
        return f"{statistics.mean(xs):.2f}" + (f" ({min(xs):.2f}-{max(xs):.2f})" if len(xs) > 1 else "")

    order = {"tokenonly": 0, "current": 1, "exclusive": 2, "token": 3}
    lines = ["| selection | lambda | seeds | kiki right after | kiki after boba | boba | floor kiki / boba | "
             "\\|A∩B\\|/\\|A\\| | neurons kiki / boba |", "|---|---|---|---|---|---|---|---|---|"]
    for (v, lam), ds in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0].split("+")[0], 9), kv[0][0], -kv[0][1])):
        col = lambda key: [d[key] for d in ds]  # noqa: E731
        lines.append(
            f"| {v} | {lam:g} | {len(ds)} | {fmt(col('kiki_after_kiki'))} | {fmt(col('kiki_after_boba'))} | "
            f"{fmt(col('boba'))} | {statistics.mean(col('floor_kiki')):.2f} / {statistics.mean(col('floor_boba')):.2f} | "
            f"{fmt(col('overlap_AB_over_A'))} | {statistics.mean(col('kiki_nnz')):.0f} / {statistics.mean(col('boba_nnz')):.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variant", nargs="?", choices=["current", "exclusive", "token", "tokenonly"])
    ap.add_argument("reg_lambda", nargs="?", type=float)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=25, help="token warm-up steps of the 'token' variant")
    ap.add_argument("--preserve", type=float, default=0.0, help="LearnerConfig.preserve_lambda (K/V preservation)")
    ap.add_argument("--out", type=Path, default=Path("same-class-results"))
    ap.add_argument("--table", type=Path, help="print the markdown table of a results folder and exit")
    args = ap.parse_args()
    if args.table:
        print(table(args.table))
        return
    if args.variant is None or args.reg_lambda is None:
        ap.error("give VARIANT and LAMBDA (or --table DIR)")
    print(json.dumps(run(args.variant, args.reg_lambda, args.steps, args.seed, args.warmup, args.out, args.preserve)))


if __name__ == "__main__":
    main()
