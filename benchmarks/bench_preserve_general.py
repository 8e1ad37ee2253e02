"""``preserve_general`` on the v2 protocol: the ``cns_kv`` row with the base's calibration prompts' keys/values
preserved too, one evaluation per weight (docs/method-notes.md, "Preserving the base's own prompts too").

    .venv/bin/python benchmarks/bench_preserve_general.py [--weights 0.1 0.3 1] [--seeds 0] [--steps 150]
        [--n-gen 2] [--out /tmp/bench-preserve-general] [--references DIR]

Each weight is a ``cns_eval`` run of the ``cns_kv`` method alone (in this process, a sequence after another) into
``OUT/w{weight}/``; its units are keyed by the setting, so a rerun resumes. ``--references DIR``: copy a finished
references unit of the same config from ``DIR/units`` (e.g. the protocol table's out folder) instead of recomputing
it. Prints, per weight, the end of sequence and the general-prompt drop on each metric (mean over seeds).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--n-gen", type=int, default=2)
    p.add_argument("--out", default="/tmp/bench-preserve-general")
    p.add_argument("--references", default=None)
    args = p.parse_args()

    import torch

    from cns_ray.eval import methods
    from cns_ray.eval.config import EvalConfig
    from cns_ray.eval.run import run_eval

    torch.set_num_threads(1)
    base_kv = dict(methods.KV_PRESERVE)
    rows = []
    for w in args.weights:
        out = Path(args.out) / f"w{w:g}"
        (out / "units").mkdir(parents=True, exist_ok=True)
        if args.references:
            for f in Path(args.references, "units").glob("references-*.json"):
                shutil.copy(f, out / "units")
        methods.KV_PRESERVE = {**base_kv, "preserve_general": w}
        cfg = EvalConfig(steps=args.steps, n_gen=args.n_gen, train_seeds=tuple(args.seeds), methods=("cns_kv",),
                         out_dir=str(out))
        summary = run_eval(cfg, local=True, say=print)
        rows.append((w, summary))
    methods.KV_PRESERVE = base_kv
    print("\n| preserve_general | " + " | ".join(f"{m} end / drop" for m in ("readout", "pixel", "clip")) + " |")
    print("|---|---|---|---|")
    for w, s in rows:
        row = _rows(s["markdown"])
        print(f"| {w:g} | " + " | ".join(f"{row[m][1].split(' ± ')[0]} / {row[m][6].split(' ± ')[0]}"
                                        for m in ("readout", "pixel", "clip")) + " |")


def _rows(markdown: str) -> dict[str, list[str]]:
    """metric -> the cns_kv row's cells (right after, end, forgetting, kept, pair, placed, general drop, ...)."""
    out = {}
    for block in markdown.split("metric: ")[1:]:
        for line in block.splitlines():
            if line.startswith("| cns_kv |"):
                out[block.split()[0]] = [c.strip() for c in line.strip("|").split("|")][1:]
                break
    return out


if __name__ == "__main__":
    main()
