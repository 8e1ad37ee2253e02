"""``cns synthesize``: a tenant's new concept from its images, without training (zero-shot delta synthesis).

In-process (no Ray): the synthesizer is a few MB and a synthesis takes well under a second once the base is loaded.
``--refine-steps K`` then runs K CNS learning steps warm-started from the synthesized state, also in-process.
"""

from __future__ import annotations

import json
import time

from cns_ray.cli import add_common


def register(sub) -> None:
    p = sub.add_parser("synthesize", help="add a concept to a tenant without training (zero-shot delta synthesis)")
    add_common(p)
    p.add_argument("--tenant", required=True, help="tenant name")
    p.add_argument("--concept", required=True, help="concept name (unique within the tenant)")
    p.add_argument("--images", required=True, help="folder of png/jpg/webp images (+ captions.txt), like cns learn")
    p.add_argument("--class-word", required=True, help="what the concept is, e.g. circle (initialises the token)")
    p.add_argument("--token", default=None, help="placeholder token (default <CONCEPT>)")
    p.add_argument("--caption", action="append", default=None, help="a caption per image, in file-name order")
    p.add_argument("--parent-version", type=int, default=None, help="tenant version to build on (default: head)")
    p.add_argument("--refine-steps", type=int, default=0,
                   help="CNS learning steps warm-started from the synthesized state (default 0: no training)")
    p.add_argument("--landing", choices=("cns", "union"),  # cns_ray.synth.apply.LANDINGS (not imported: --help stays fast)
                   default="cns",
                   help="where the delta lands: cns = the concept neurons CNS selects from the captions; union = the "
                        "synthesizer's own coordinates (default %(default)s)")
    p.add_argument("--source", choices=("flow", "blend", "nearest"),  # cns_ray.synth.library.SOURCES
                   default="flow",
                   help="the proposal: flow = sample the synthesizer; blend = the embedding-weighted blend of the 5 "
                        "nearest library concepts; nearest = the nearest one (both read the library from --library; "
                        "default %(default)s)")
    p.add_argument("--library", default=None,
                   help="store holding the library, for --source blend/nearest (default: --store; "
                        "python -m pipelines.build_library builds it)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default %(default)s)")
    p.add_argument("--synthesizer", default=None,
                   help="synthesizer folder (default: the one shipped for the tiny base; python -m pipelines.train_synth)")
    p.add_argument("--metric-model", default=None,
                   help="image encoder of the references (default: the one the synthesizer was trained with)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_synthesize, exit_hard=True)


def cmd_synthesize(args) -> int:
    import torch

    from cns_ray.config import LearnerConfig, StoreConfig
    from cns_ray.eval.metric_model import load_metric_model
    from cns_ray.jobs.calibrate import general_masks
    from cns_ray.jobs.train import resolve_learner_config
    from cns_ray.learn import ConceptRequest
    from cns_ray.models import load_base_model
    from cns_ray.store import ConceptStore
    from cns_ray.synth.apply import synthesize_concept
    from cns_ray.synth.synthesizer import Synthesizer, default_synth_folder

    request = ConceptRequest(tenant=args.tenant, concept=args.concept, class_word=args.class_word, images=args.images,
                             token=args.token, captions=args.caption, parent_version=args.parent_version)
    torch.set_num_threads(1)  # tiny models on a shared CPU: two threads were many times slower here (STYLE, ENVIRONMENT)
    t0 = time.perf_counter()
    base = load_base_model(args.base_model)
    synth = Synthesizer.load(args.synthesizer or default_synth_folder())
    synth.check_base(base.base_id)
    metric = load_metric_model(args.metric_model or synth.meta.get("metric", "toy"))
    cfg = resolve_learner_config(LearnerConfig(steps=None, token_lr=None, weight_lr=None, augment=args.refine_steps > 0,
                                               seed=args.seed), args.base_model)
    store = ConceptStore(StoreConfig(uri=args.store))
    propose = None
    if args.source != "flow":  # refused (empty library, other metric) before anything of the tenant is read
        from cns_ray.synth.library import library_proposer

        propose = library_proposer(base, args.library or args.store, synth.coords, args.source,
                                   args.metric_model or synth.meta.get("metric", "toy"))
    general = general_masks(base, store, cfg.selection) if args.landing == "cns" else None  # cached in the store
    loaded = time.perf_counter() - t0
    t1 = time.perf_counter()
    version, stats = synthesize_concept(base, store, request, synth, metric, cfg, seed=args.seed, landing=args.landing,
                                        refine_steps=args.refine_steps, general=general, propose=propose,
                                        source=args.source)
    stats["commit_seconds"] = round(time.perf_counter() - t1 - stats["seconds"], 3)
    out = {"tenant": args.tenant, "concept": args.concept, "version": version, "method": "synthesized",
           "load_seconds": round(loaded, 2), **stats}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"tenant {args.tenant}: synthesized {args.concept} -> version {version} ({stats['seconds']:.2f} s + commit "
              f"{stats['commit_seconds']:.2f} s, "
              f"{args.refine_steps} refine steps, source {args.source}, landing {args.landing}, {stats['entries']} entries; "
              f"models loaded in {loaded:.1f} s)")
    return 0
