"""Train the zero-shot synthesizer on a built concept library and write it (a few MB).

    python -m pipelines.train_synth                        # library of the default base in ./cns-store -> shipped folder
    python -m pipelines.train_synth --out my-synth --val 0.1

With ``--val F`` a fraction of the library is held out first and the synthesizer trained on the rest is compared on
it with the baselines in state space (cosine of the proposed vector with the learned one); the shipped synthesizer
is then trained on the whole library. Prints one JSON line with the summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from cns_ray.config import DEFAULT_BASE_MODEL, DEFAULT_STORE_URI
    from cns_ray.synth.model import SynthConfig

    d = SynthConfig()
    p = argparse.ArgumentParser(prog="python -m pipelines.train_synth", description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default=os.environ.get("CNS_STORE", DEFAULT_STORE_URI), help="store folder or s3://...")
    p.add_argument("--base-model", default=os.environ.get("CNS_BASE_MODEL", DEFAULT_BASE_MODEL))
    p.add_argument("--out", default=None, help="output folder (default: the shipped one for tiny, cns_ray/data/synth/tiny-world)")
    p.add_argument("--val", type=float, default=0.1, help="fraction held out for the state-space check (0: none)")
    for name in ("pca_dim", "z_dim", "hidden", "vae_steps", "flow_steps", "seed"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    p.add_argument("--temperature", type=float, default=d.temperature)
    return p.parse_args(argv)


def _cos(a, b) -> float:
    import torch.nn.functional as F

    return float(F.cosine_similarity(a[None].float(), b[None].float()))


def state_space_check(x, cond, coords, base_id, cfg, val: float, seed: int) -> dict:
    """Hold out ``val`` of the library; cosine (proposed, learned) on it for the synthesizer and the baselines."""
    import torch

    from cns_ray.synth.baselines import blend, nearest
    from cns_ray.synth.synthesizer import Synthesizer

    n = x.shape[0]
    k = max(1, int(round(val * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    te, tr = perm[:k], perm[k:]
    synth = Synthesizer.fit(x[tr], cond[tr], coords, base_id, cfg)
    rows = {"flow": [], "flow_t0": [], "nearest": [], "blend": []}
    for i in te.tolist():
        rows["flow"].append(_cos(synth.sample(cond[i], seed=0), x[i]))
        rows["flow_t0"].append(_cos(synth.sample(cond[i], seed=0, temperature=0.0), x[i]))
        rows["nearest"].append(_cos(nearest(x[tr], cond[tr], cond[i])[0], x[i]))
        rows["blend"].append(_cos(blend(x[tr], cond[tr], cond[i]), x[i]))
    return {"held_out": k, **{f"cos_{m}": round(sum(v) / len(v), 4) for m, v in rows.items()}}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)

    import torch

    from cns_ray.errors import CNSError
    from cns_ray.models import load_base_model
    from cns_ray.synth.library import ConceptLibrary, library_arrays
    from cns_ray.synth.model import SynthConfig
    from cns_ray.synth.synthesizer import Synthesizer, default_synth_folder

    torch.set_num_threads(1)
    try:
        cfg = SynthConfig(pca_dim=args.pca_dim, z_dim=args.z_dim, hidden=args.hidden, vae_steps=args.vae_steps,
                          flow_steps=args.flow_steps, seed=args.seed, temperature=args.temperature)
        base = load_base_model(args.base_model)
        lib = ConceptLibrary(args.store, base.base_id)
        t0 = time.perf_counter()
        entries, x, cond, coords = library_arrays(base, lib)
        if len(entries) < 2:
            raise CNSError(f"the library {lib.uri} holds {len(entries)} finished entries, training needs >= 2: "
                           "run python -m pipelines.build_library first")
        check = state_space_check(x, cond, coords, base.base_id, cfg, args.val, args.seed) if args.val > 0 else {}
        meta = {"metric": entries[0].metric, "library": lib.uri, "library_steps": sorted({e.steps for e in entries}),
                "state_space_check": check, "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        synth = Synthesizer.fit(x, cond, coords, base.base_id, cfg, meta)
        out = synth.save(args.out or default_synth_folder())
    except CNSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in out.iterdir())
    print(json.dumps({"out": str(out), "bytes": size, "library_size": len(entries), "coords": coords.n_weights,
                      "token_dim": coords.token_dim, "seconds": round(time.perf_counter() - t0, 1), **check}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
