"""Train the toy CLIP (:mod:`cns_ray.eval.metric_model`) on rendered v2 scenes; ~15-20 min on 1 CPU thread.

    python -m pipelines.train_metric --out cns_ray/data/eval/toy-clip [--steps 1500] [--max-minutes 18] [--seed 0]
    python -m pipelines.train_metric --out FOLDER --init-from FOLDER0 --lr 1e-3 --seed 1   # continue a model
    python -m pipelines.train_metric --out FOLDER --remeasure                              # ceilings only

Scenes are rendered on the fly: one- and two-object, held-out instances included (a measuring tool sees every
instance, as CLIP has seen dogs). Each image's caption is its full caption (probability ``p_full``) or one with
look words dropped (per object, each group at ``drop``), so that class-word prompts embed among real captions. Each
image also brings ``hard`` hard negatives: its caption with one visible attribute changed
(:func:`cns_ray.eval.metrics.attribute_variants`: a class, colour, pattern, marking, size, position, background),
and a two-object image its caption with the two objects swapped, so that every word and the order matter. The image
CNN starts from the shipped readout's conv levels (``--init-image``). At the end the per-attribute ceilings on
2000 fresh rendered scenes (full captions, :func:`cns_ray.eval.metrics.attribute_accuracy`) are written to
``ceilings.json`` beside the weights.

The shipped weights were made in two stages (recorded in its ``ceilings.json``): 1011 steps (18 min) before the
text encoder had its phrase index and before the swap negative was forced (pair order 0.57 then), then 690 steps
(11 min) of ``--init-from`` with both. A run of this code from scratch has both from the start.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("train_metric")

CEILING_SEED = 888_000
"""Scenes of the ceiling measurement (training draws seeds ``seed * 1_000_003 + step``, far from it)."""
VISIBLE = {"colour": "colour", "colour2": "colour", "pattern": "pattern", "marking": "marking",
           "marking_colour": "marking"}
"""Which dropout group hides an attribute's words (the others are always written)."""


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1500
    batch: int = 128
    lr: float = 2e-3
    warmup: int = 50
    p_full: float = 0.5
    """Probability that an image's caption keeps every look word."""
    drop: float = 0.35
    """Otherwise, per object, the probability of dropping each group of look words (colour, pattern, marking)."""
    hard: int = 4
    """Hard negatives per image (its caption with one attribute changed)."""
    init_image: str | None = "readout"
    """Initialise the image CNN from a trained readout's conv levels (``readout``: the shipped one; a folder; or
    None: from scratch). Same architecture; like a CLIP started from a pretrained backbone, it converges within a
    shared CPU's budget, and is then trained contrastively as a whole but for the frozen levels."""
    init_from: str | None = None
    """Continue from the toy CLIP in this folder (a fresh schedule; parts it lacks start at their init; replaces
    ``init_image``)."""
    order_negative: bool = True
    """Every two-object image also gets its caption with the two objects swapped as a hard negative."""
    freeze_levels: int = 2
    """With ``init_image``: the first levels (the costly 32x32 and 16x16 ones) stay frozen."""
    trunk_lr: float = 0.3
    """With ``init_image``: the learning rate of the other initialised levels, as a fraction of ``lr``."""
    seed: int = 0
    max_minutes: float = 18.0
    """Wall-time budget: the cosine schedule runs on max(step / steps, elapsed / budget), so a slow (shared) CPU
    ends early with the learning rate annealed all the same."""
    ceiling_n: int = 2000

    def __post_init__(self) -> None:
        from cns_ray.errors import ConfigError

        bad = [f"{k}={getattr(self, k)} must be > 0" for k in ("steps", "batch", "lr", "max_minutes", "ceiling_n")
               if getattr(self, k) <= 0]
        bad += [f"{k}={getattr(self, k)} must be in [0, 1]" for k in ("p_full", "drop") if not 0 <= getattr(self, k) <= 1]
        if self.hard < 0:
            bad.append(f"hard={self.hard} must be >= 0")
        if not 0 <= self.freeze_levels <= 4:
            bad.append(f"freeze_levels={self.freeze_levels} must be in [0, 4] (the image CNN's levels)")
        if bad:
            raise ConfigError("train_metric: " + "; ".join(bad))


def vocabulary() -> tuple[str, ...]:
    from cns_ray.world.scene import all_words

    return ("<pad>", "<unk>", *all_words())


def render_batch(n: int, seed: int):
    """(scenes, images uint8 [n, 32, 32, 3]) of the v2 world, held-out instances included."""
    from cns_ray.world.render import render_scene
    from cns_ray.world.scene import sample_scenes

    scenes = sample_scenes(n, seed, allow_held_out=True)
    return scenes, np.stack([render_scene(s) for s in scenes])


def batch_captions(scenes, rng: np.random.Generator, cfg: TrainConfig) -> tuple[list[str], list[list[str]]]:
    """Per scene: its training caption and up to ``cfg.hard`` hard negatives written with the same dropped words."""
    from cns_ray.eval.metrics import attribute_tests, attribute_variants
    from cns_ray.world.scene import FULL, DropoutRates, caption

    rates = DropoutRates(cfg.drop, cfg.drop, cfg.drop)
    positives, negatives = [], []
    for s in scenes:
        drops = tuple(FULL if rng.random() < cfg.p_full else rates.sample(rng) for _ in s.objects)
        pos = caption(s, drops)
        slot_of = {"object": 0, "left": 0, "right": 1}
        tests = []
        for key, cands in attribute_tests(s):
            slot, _, attr = key.rpartition(".")
            group = VISIBLE.get(attr)
            if group is None or not getattr(drops[slot_of.get(slot, 0)], group):
                tests.append(cands[1:])
        negs = []
        if cfg.order_negative and len(s.objects) == 2 and (swap := attribute_variants(s, 0, "order")):
            negs.append(caption(swap[0], drops))
        for j in rng.permutation(len(tests))[: cfg.hard]:
            variant = tests[int(j)][int(rng.integers(len(tests[int(j)])))]
            text = caption(variant, drops)
            if text != pos:
                negs.append(text)
        positives.append(pos)
        negatives.append(negs)
    return positives, negatives


def contrastive_loss(model, x: torch.Tensor, positives: list[str], negatives: list[list[str]]) -> tuple[torch.Tensor, float]:
    """Symmetric InfoNCE over the batch; image -> text also against every hard negative. Duplicate captions in the
    batch are all positives. Returns (loss, image -> text top-1 accuracy over the batch's positives)."""
    flat = [t for negs in negatives for t in negs]
    img = F.normalize(model.image(x), dim=-1)  # [B, D]
    ids = model.tokenize(positives + flat)  # [B + K, L]
    txt = F.normalize(model.text(ids), dim=-1)  # [B + K, D]
    b = len(positives)
    logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T  # [B, B + K]
    same = torch.tensor([[p == q for q in positives + flat] for p in positives], dtype=torch.float32)  # [B, B + K]
    i2t = torch.sum(-(same / same.sum(1, keepdim=True)) * logits.log_softmax(1), 1).mean()
    sq = same[:, :b]  # [B, B]
    t2i = torch.sum(-(sq / sq.sum(1, keepdim=True)) * logits[:, :b].T.log_softmax(1), 1).mean()
    acc = float((same.gather(1, logits.argmax(1, keepdim=True)) > 0).float().mean())
    return 0.5 * (i2t + t2i), acc


def measure_ceilings(model, n: int, seed: int = CEILING_SEED) -> dict:
    """Per-attribute accuracy (full captions, one word varied) and caption top-1 among 10, on fresh rendered scenes."""
    from cns_ray.eval import metrics
    from cns_ray.world.scene import caption

    scenes, images = render_batch(n, seed)
    ones = [i for i, s in enumerate(scenes) if len(s.objects) == 1]
    twos = [i for i, s in enumerate(scenes) if len(s.objects) == 2]
    caps = [caption(s) for s in scenes]
    hits = metrics.attribute_hits(model, images, scenes)
    return {"n": n, "seed": seed, "attributes": {k: float(np.mean(v)) for k, v in hits.items()},
            "tests": {k: len(v) for k, v in hits.items()},
            "one_object": metrics.attribute_accuracy(model, images[ones], [scenes[i] for i in ones]),
            "two_object": metrics.attribute_accuracy(model, images[twos], [scenes[i] for i in twos]),
            "caption_top1_of_10": metrics.caption_rank_accuracy(model, images, caps, k=10)}


LAYERS_PER_LEVEL = 6
"""conv, norm, act, conv, norm, act (:class:`cns_ray.eval.metric_model.ImageEncoder`)."""


def param_groups(model, cfg: TrainConfig) -> list[dict]:
    """Initialise the image CNN from a readout (see ``TrainConfig.init_image``); the optimiser's groups, each with
    its ``scale`` of the learning rate."""
    if cfg.init_from is not None:
        from safetensors.torch import load_file

        from cns_ray.eval.metric_model import WEIGHTS

        missing, unexpected = model.load_state_dict(load_file(f"{cfg.init_from}/{WEIGHTS}"), strict=False)
        log.info("continuing from %s (new: %s; dropped: %s)", cfg.init_from, missing, unexpected)
    if cfg.init_image is None or cfg.init_from is not None:
        frozen = list(model.image.net[: cfg.freeze_levels * LAYERS_PER_LEVEL].parameters()) if cfg.init_from else []
        for p in frozen:
            p.requires_grad_(False)
        return [{"params": [p for p in model.parameters() if p.requires_grad], "scale": 1.0}]
    from cns_ray.eval.readout import load_readout

    readout = load_readout(None if cfg.init_image == "readout" else cfg.init_image)
    if tuple(readout.net.cfg.widths) != tuple(model.cfg.widths):
        from cns_ray.errors import ConfigError

        raise ConfigError(f"init_image: the readout's widths {readout.net.cfg.widths} differ from the toy CLIP's "
                         f"{model.cfg.widths}: train from scratch (--init-image none) or match them")
    model.image.net.load_state_dict(readout.net.features.state_dict())
    frozen = list(model.image.net[: cfg.freeze_levels * LAYERS_PER_LEVEL].parameters())
    for p in frozen:
        p.requires_grad_(False)
    trunk = [p for p in model.image.net.parameters() if p.requires_grad]
    ids = {id(p) for p in model.image.net.parameters()}
    rest = [p for p in model.parameters() if id(p) not in ids]
    log.info("image CNN from %s: %d params frozen, %d at %.2f x lr", cfg.init_image, sum(p.numel() for p in frozen),
             sum(p.numel() for p in trunk), cfg.trunk_lr)
    return [{"params": trunk, "scale": cfg.trunk_lr}, {"params": rest, "scale": 1.0}]


def train(cfg: TrainConfig):
    from cns_ray.eval.metric_model import MetricConfig, ToyClip, _pixels

    torch.manual_seed(cfg.seed)
    model = ToyClip(MetricConfig(vocab=vocabulary()))
    opt = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=0.01)
    rng = np.random.default_rng(cfg.seed)
    t0, ema = time.monotonic(), None
    for step in range(1, cfg.steps + 1):
        scenes, images = render_batch(cfg.batch, cfg.seed * 1_000_003 + step)
        positives, negatives = batch_captions(scenes, rng, cfg)
        loss, acc = contrastive_loss(model, _pixels(images, 32), positives, negatives)
        progress = min(1.0, max(step / cfg.steps, (time.monotonic() - t0) / (cfg.max_minutes * 60)))
        lr = cfg.lr * min(1.0, step / cfg.warmup) * 0.5 * (1 + np.cos(np.pi * progress))
        for g in opt.param_groups:
            g["lr"] = lr * g["scale"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema = float(loss.detach()) if ema is None else 0.95 * ema + 0.05 * float(loss.detach())
        elapsed = time.monotonic() - t0
        if step % 50 == 0:
            log.info("step %d loss %.4f (ema %.4f) batch-acc %.2f lr %.2e %.0fs", step, float(loss.detach()), ema, acc,
                     lr, elapsed)
        if progress >= 1.0:
            if step < cfg.steps:
                log.warning("stopping at step %d of %d: max_minutes=%.1f spent", step, cfg.steps, cfg.max_minutes)
            break
    return model.eval().requires_grad_(False), step, time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.train_metric", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--batch", type=int, default=TrainConfig.batch)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--hard", type=int, default=TrainConfig.hard)
    p.add_argument("--init-image", default=TrainConfig.init_image,
                   help="'readout' (the shipped readout's conv levels), a readout folder, or 'none' (from scratch)")
    p.add_argument("--init-from", default=None, help="continue from the toy CLIP in this folder")
    p.add_argument("--freeze-levels", type=int, default=TrainConfig.freeze_levels)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--max-minutes", type=float, default=TrainConfig.max_minutes)
    p.add_argument("--ceiling-n", type=int, default=TrainConfig.ceiling_n)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--remeasure", action="store_true", help="only re-measure the ceilings of the toy CLIP in --out")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)
    if args.remeasure:
        from cns_ray.eval.metric_model import ToyClip, load_ceilings

        model = ToyClip.load(args.out)
        ceilings = {**measure_ceilings(model, args.ceiling_n), "training": load_ceilings(args.out).get("training")}
        model.save(args.out, ceilings)
        log.info("re-measured %s: %s", args.out, {k: round(v, 3) for k, v in ceilings["attributes"].items()})
        return 0
    cfg = TrainConfig(args.steps, args.batch, args.lr, hard=args.hard, seed=args.seed, max_minutes=args.max_minutes,
                      ceiling_n=args.ceiling_n, freeze_levels=args.freeze_levels,
                      init_image=None if args.init_image == "none" else args.init_image, init_from=args.init_from)
    model, steps, seconds = train(cfg)
    ceilings = measure_ceilings(model, cfg.ceiling_n)
    ceilings["training"] = {"steps": steps, "batch": cfg.batch, "hard": cfg.hard, "seconds": round(seconds),
                            "seed": cfg.seed, "init_image": cfg.init_image, "freeze_levels": cfg.freeze_levels,
                            "lr": cfg.lr, "continued_from": cfg.init_from}
    model.save(args.out, ceilings)
    log.info("saved %s; ceilings: %s", args.out, {k: round(v, 3) for k, v in ceilings["attributes"].items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
