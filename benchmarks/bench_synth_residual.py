"""A lead for issue 11, in state space: does a synthesizer that proposes a *residual* on the nearest library entry
beat the nearest entry itself? (docs/synthesis.md)

On a built library, a held-out tenth (the split of ``pipelines.train_synth``'s check) is proposed four ways and
compared with the learned state by cosine (whole vector; token block): the shipped kind of synthesizer (flow at
temperature 0), the nearest library entry by reference embedding, the blend of the 5 nearest, and ``residual``: the
nearest entry plus a synthesizer trained on ``x_i - x_nn(i)`` (each training entry's nearest *other* entry). State
space only: no image is generated, so this is a cheap first look, not the eval table.

    .venv/bin/python benchmarks/bench_synth_residual.py --store ./cns-store      # the lambda-1 library
    .venv/bin/python benchmarks/bench_synth_residual.py --store /tmp/lib001      # a lambda-0.01 library

Prints one markdown row per proposal (cosine ignores magnitude: the last column is the proposal's delta norm over the
learned one's).
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="./cns-store")
    ap.add_argument("--base-model", default="tiny")
    ap.add_argument("--val", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from cns_ray.models import load_base_model
    from cns_ray.synth.baselines import blend, nearest
    from cns_ray.synth.library import ConceptLibrary, library_arrays
    from cns_ray.synth.model import SynthConfig
    from cns_ray.synth.synthesizer import Synthesizer

    torch.set_num_threads(1)
    base = load_base_model(args.base_model)
    entries, x, cond, coords = library_arrays(base, ConceptLibrary(args.store, base.base_id))
    n, t = x.shape[0], coords.token_dim
    k = max(1, int(round(args.val * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))
    te, tr = perm[:k], perm[k:]
    xt, ct = x[tr], F.normalize(cond[tr].float(), dim=-1)  # [N', D], [N', c]
    sim = ct @ ct.T  # [N', N']
    sim.fill_diagonal_(-2.0)
    nn_of = sim.argmax(dim=1)  # each training entry's nearest other entry
    t0 = time.time()
    flow = Synthesizer.fit(xt, cond[tr], coords, base.base_id, SynthConfig())
    resid = Synthesizer.fit(xt - xt[nn_of], cond[tr], coords, base.base_id, SynthConfig())
    fit_s = time.time() - t0

    def cos(a, b) -> float:
        return float(F.cosine_similarity(a[None].float(), b[None].float()))

    props = {
        "flow (as shipped)": lambda i: flow.sample(cond[i], seed=0, temperature=0.0),
        "nearest entry": lambda i: nearest(xt, cond[tr], cond[i])[0],
        "blend of 5 nearest": lambda i: blend(xt, cond[tr], cond[i]),
        "nearest + residual flow": lambda i: nearest(xt, cond[tr], cond[i])[0] + resid.sample(cond[i], seed=0, temperature=0.0),
    }
    print(f"library {args.store}: {n} entries, {k} held out; two synthesizers fitted in {fit_s:.0f} s")
    print("| proposal | cosine, whole state | cosine, token block | cosine, delta block | norm / learned norm, delta block |")
    print("|---|---|---|---|---|")
    for name, f in props.items():
        pairs = [(f(i), x[i]) for i in te.tolist()]
        whole = sum(cos(a, b) for a, b in pairs) / k
        token = sum(cos(a[-t:], b[-t:]) for a, b in pairs) / k
        delta = sum(cos(a[:-t], b[:-t]) for a, b in pairs) / k
        norm = sum(float(a[:-t].norm() / b[:-t].norm().clamp(min=1e-12)) for a, b in pairs) / k
        print(f"| {name} | {whole:.3f} | {token:.3f} | {delta:.3f} | {norm:.2f} |")


if __name__ == "__main__":
    main()
