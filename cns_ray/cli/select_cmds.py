"""``cns calibrate`` (general neurons, cached in the store) and ``cns select`` (concept neurons of an image folder)."""

from __future__ import annotations

import argparse
import sys
import time

from cns_ray.cli import add_common


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="general neurons of a base model (cached in the store); prints layer-wise fractions",
        description="Compute the general neurons of the base model: AND over the calibration prompts of each "
        "prompt's top-ratio cross-attention K/V weights. Cached in the store by (base model, prompts, ratio).",
    )
    add_common(p)
    p.add_argument("--prompts", default=None,
                   help="text file, one calibration prompt per line (default: the base model's own, else the built-in 20)")
    _add_ratio(p)
    _add_actors(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser(
        "select",
        help="concept neurons for a folder of images + captions/class word; prints counts per layer",
        description="Select a concept's neurons: AND over its captions' top-ratio weights, minus the general "
        "neurons (from the store cache, computed if missing), optionally capped to a budget. Captions: --captions "
        "FILE, else captions.txt in the folder (a line per image, in file-name order), else NAME.txt per image, "
        "else 'a photo of a {class_word}'.",
    )
    add_common(p)
    p.add_argument("--images", required=True, help="folder of the concept's images (png/jpg/jpeg/webp)")
    p.add_argument("--class-word", required=True, help="the concept's class, e.g. dog")
    p.add_argument("--captions", default=None, help="text file, one caption per image in file-name order")
    p.add_argument("--prompts", default=None,
                   help="calibration prompts for the general neurons (default: the base model's own, else built-in)")
    _add_ratio(p)
    p.add_argument(
        "--budget", type=float, default=None, help="cap concept neurons to this fraction of all target weights"
    )
    _add_actors(p)
    p.set_defaults(func=cmd_select)


def _add_ratio(p: argparse.ArgumentParser) -> None:
    p.add_argument("--select-ratio", type=float, default=0.1, help="top fraction of each row kept (default 0.1)")


def _add_actors(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--actors", type=int, default=0, help="scorer actors on Ray for calibration (0 = in this process; default 0)"
    )
    p.add_argument("--address", default=None, help="Ray address for --actors > 0 (default: RAY_ADDRESS, else a local Ray on 127.0.0.1)")


def _progress(done: int, total: int) -> None:
    print(f"  scored shard {done}/{total}", file=sys.stderr, flush=True)


def _setup(args):
    from cns_ray.config import StoreConfig
    from cns_ray.models import load_base_model
    from cns_ray.select import load_prompts
    from cns_ray.store import ConceptStore

    store = ConceptStore(StoreConfig(uri=args.store))
    if args.actors > 0 and args.address:
        from cns_ray.jobs.ray_env import init_ray

        init_ray(args.address)  # else Ray starts only if the cache misses
    print(f"loading base model {args.base_model} ...", file=sys.stderr, flush=True)
    base = load_base_model(args.base_model)
    return base, store, load_prompts(args.prompts, base)


def _short(name: str) -> str:
    return name.replace(".transformer_blocks.0.", ".").replace("attentions.", "attn")


def cmd_calibrate(args) -> int:
    from cns_ray import neurons
    from cns_ray.config import SelectionConfig
    from cns_ray.jobs.calibrate import general_masks_info

    cfg = SelectionConfig(select_ratio=args.select_ratio)
    base, store, prompts = _setup(args)
    res = general_masks_info(base, store, cfg, prompts, args.actors, _progress)
    src = "from the store cache" if res.from_cache else f"scored in {res.shards} shard(s), {res.seconds:.1f}s"
    print(f"general neurons of base {res.base_id} ({args.base_model}): {res.num_prompts} prompts, "
          f"select_ratio {cfg.select_ratio}, key {res.key}, {src}")
    shapes = base.target_shapes()
    width = max(len(_short(n)) for n in shapes)
    print(f"{'layer':<{width}}  {'shape':>11}  {'general':>8}")
    for name, frac in neurons.layer_fractions(res.masks).items():
        out, inn = shapes[name]
        print(f"{_short(name):<{width}}  {f'{out}x{inn}':>11}  {frac:>8.2%}")
    print(f"overall general fraction: {neurons.mask_fraction(res.masks):.2%} of "
          f"{sum(m.numel() for m in res.masks.values()):,} target weights")
    return 0


def cmd_select(args) -> int:
    from cns_ray.config import SelectionConfig
    from cns_ray.errors import InputError
    from cns_ray.jobs.calibrate import general_masks_info
    from cns_ray.learn.data import list_images, read_captions, selection_caption
    from cns_ray.select import select_concept

    cfg = SelectionConfig(select_ratio=args.select_ratio, budget=args.budget)
    files = list_images(args.images)
    given = None
    if args.captions:
        try:
            with open(args.captions, encoding="utf-8") as f:
                given = [line for line in f.read().splitlines() if line.strip()]
        except OSError as e:
            raise InputError(f"--captions {args.captions!r} could not be read ({e}): give a text file, a line per image") from e
    captions = [selection_caption(c) for c in read_captions(files, args.class_word, given)]  # as the learner scores them
    base, store, prompts = _setup(args)
    t0 = time.perf_counter()
    gen = general_masks_info(base, store, cfg, prompts, args.actors, _progress)
    sel = select_concept(base, captions, gen.masks, cfg)
    print(f"concept neurons for {len(files)} image(s) of '{args.class_word}' on base {base.base_id} "
          f"(select_ratio {cfg.select_ratio}, budget {cfg.budget}; general neurons "
          f"{'from the store cache' if gen.from_cache else 'computed and cached'}; {time.perf_counter() - t0:.1f}s)")
    for c in dict.fromkeys(captions):
        print(f"  caption: {c}")
    shapes = base.target_shapes()
    width = max(len(_short(n)) for n in shapes)
    print(f"{'layer':<{width}}  {'shape':>11}  {'base':>7}  {'general':>7}  {'concept':>7}")
    for name in shapes:
        out, inn = shapes[name]
        counts = [int(m[name].sum()) for m in (sel.base, sel.general, sel.concept)]
        print(f"{_short(name):<{width}}  {f'{out}x{inn}':>11}  {counts[0]:>7}  {counts[1]:>7}  {counts[2]:>7}")
    s = sel.summary()
    total = sum(m.numel() for m in sel.concept.values())
    print(f"concept neurons: {int(s['concept_count']):,} = {s['concept_fraction']:.3%} of {total:,} target weights "
          f"(base {s['base_fraction']:.2%}, general {s['general_fraction']:.2%})")
    return 0
