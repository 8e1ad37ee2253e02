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
from dataclasses import replace


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
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling noise scale; default: 0 or 1, whichever the held-out check prefers (token cosine)")
    p.add_argument("--limit", type=int, default=0,
                   help="train on the first N finished entries by name only (a learning curve over library size; 0: all)")
    p.add_argument("--views", type=int, default=4,
                   help="extra reference sets per world-instance entry (other contexts), embedded as more conditions for "
                        "the same state: the flow learns that context does not change the concept (0: none)")
    p.add_argument("--token-weight", type=float, default=d.token_weight, help="token block's share in the projection")
    p.add_argument("--retrieval-k", type=int, default=d.retrieval_k,
                   help="condition the flow on the blend of the k nearest library latents too (0: off; default %(default)s)")
    p.add_argument("--start-t", type=float, default=d.start_t,
                   help="with --retrieval-k: begin sampling from the retrieved latent at this point of the path (default %(default)s)")
    p.add_argument("--residual", action="store_true",
                   help="with --retrieval-k: propose the neighbours' blend in full plus the flow's latent move (stores the library's states)")
    return p.parse_args(argv)


def _cos(a, b) -> float:
    import torch.nn.functional as F

    return float(F.cosine_similarity(a[None].float(), b[None].float()))


def state_space_check(entries, x, cond, coords, base_id, cfg, val: float, seed: int, views: int) -> dict:
    """Hold out ``val`` of the library; cosine (proposed, learned) on it, for the whole vector and for its token
    block, for the synthesizer (sampled at temperature 1 and 0) and the baselines."""
    import torch

    from cns_ray.synth.baselines import blend, nearest
    from cns_ray.synth.synthesizer import Synthesizer

    n, t = x.shape[0], coords.token_dim
    k = max(1, int(round(val * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    te, tr = perm[:k], perm[k:]
    xa, ca = extra_views([entries[i] for i in tr.tolist()], x[tr], cond[tr], views)
    synth = Synthesizer.fit(xa, ca, coords, base_id, cfg)
    props = {"flow_t1": lambda i: synth.sample(cond[i], seed=0, temperature=1.0),
             "flow_t0": lambda i: synth.sample(cond[i], seed=0, temperature=0.0),
             "nearest": lambda i: nearest(x[tr], cond[tr], cond[i])[0],
             "blend": lambda i: blend(x[tr], cond[tr], cond[i])}
    out = {"held_out": k}
    for name, f in props.items():
        vs = [(f(i), x[i]) for i in te.tolist()]
        out[f"cos_{name}"] = round(sum(_cos(a, b) for a, b in vs) / k, 4)
        out[f"cos_token_{name}"] = round(sum(_cos(a[-t:], b[-t:]) for a, b in vs) / k, 4)
    return out


def extra_views(entries, x, cond, views: int):
    """(x, cond) with ``views`` more reference embeddings per entry whose instance is a world one (re-rendered in
    other contexts with other seeds, embedded with the entry's metric model)."""
    import torch

    from cns_ray.eval.metric_model import load_metric_model
    from cns_ray.synth.library import reference_embedding
    from cns_ray.world import concepts as wc
    from cns_ray.world.scene import Look

    if views <= 0:
        return x, cond
    metric = load_metric_model(entries[0].metric)
    xs, cs = [x], [cond]
    for v in range(views):
        embs = []
        for e in entries:
            c = wc.Concept(e.name, e.shape, Look(**e.look))
            embs.append(reference_embedding(metric, wc.reference_set(c, e.n_images, seed=1000 + v)[0]))
        xs.append(x)
        cs.append(torch.stack(embs))
    return torch.cat(xs), torch.cat(cs)


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
        if args.limit < 0:  # before the base is loaded
            raise CNSError(f"--limit {args.limit} must be >= 0 (0: every finished entry)")
        cfg = SynthConfig(pca_dim=args.pca_dim, z_dim=args.z_dim, hidden=args.hidden, vae_steps=args.vae_steps,
                          flow_steps=args.flow_steps, seed=args.seed, token_weight=args.token_weight,
                          retrieval_k=args.retrieval_k, start_t=args.start_t, residual=args.residual,
                          temperature=1.0 if args.temperature is None else args.temperature)
        base = load_base_model(args.base_model)
        lib = ConceptLibrary(args.store, base.base_id)
        t0 = time.perf_counter()
        names = sorted(lib.entries())[:args.limit] if args.limit else None
        entries, x, cond, coords = library_arrays(base, lib, names)
        if len(entries) < 2:
            raise CNSError(f"the library {lib.uri} holds {len(entries)} finished entries, training needs >= 2: "
                           "run python -m pipelines.build_library first")
        check = (state_space_check(entries, x, cond, coords, base.base_id, cfg, args.val, args.seed, args.views)
                 if args.val > 0 else {})
        x, cond = extra_views(entries, x, cond, args.views)
        if args.temperature is None and check:
            cfg = replace(cfg, temperature=0.0 if check["cos_token_flow_t0"] > check["cos_token_flow_t1"] else 1.0)
        meta = {"metric": entries[0].metric, "library": lib.uri, "library_steps": sorted({e.steps for e in entries}),
                "state_space_check": check, "views": args.views, "library_size": len(entries), "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
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
