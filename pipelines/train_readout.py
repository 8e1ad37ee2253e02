"""Train the per-object attribute readout (:mod:`cns_ray.eval.readout`) on rendered v2 scenes; ~15 min on 1 CPU thread.

    python -m pipelines.train_readout --out cns_ray/data/eval/readout [--steps 1100] [--max-minutes 17] [--seed 0]

Scenes are rendered on the fly (one- and two-object, held-out instances included: the readout is a measuring
tool). Each image gets a little Gaussian pixel noise (std up to ``--noise``) so that a readout of generated images
does not hinge on exact flat colours. At the end its per-head accuracy on fresh rendered scenes (a seed training
never drew) is written to ``ceilings.json`` beside the weights, with per-concept instance-match ceilings on the
named concepts' references.

The shipped weights: 952 steps from scratch (17 min), then 809 steps of ``--init`` (``--lr 1e-3 --seed 1
--max-minutes 11``); both recorded in its ``ceilings.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger("train_readout")

CEILING_SEED = 777_000
"""Scenes of the ceiling measurement (training draws seeds ``seed * 1_000_003 + step``, far from it)."""


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1100
    batch: int = 128
    lr: float = 2e-3
    warmup: int = 50
    noise: float = 0.05
    """Largest per-image std of the Gaussian pixel noise ([-1, 1] units; 0.05 ~ 6/255)."""
    seed: int = 0
    max_minutes: float = 17.0
    """Wall-time budget: the cosine schedule runs on max(step / steps, elapsed / budget), so a slow (shared) CPU
    ends early with the learning rate annealed all the same."""
    ceiling_n: int = 2000
    init: str | None = None
    """Continue from the readout in this folder (its weights; a fresh schedule) instead of from scratch."""

    def __post_init__(self) -> None:
        from cns_ray.errors import ConfigError

        bad = [f"{k}={getattr(self, k)} must be > 0" for k in ("steps", "batch", "lr", "max_minutes", "ceiling_n")
               if getattr(self, k) <= 0]
        if not 0 <= self.noise < 1:
            bad.append(f"noise={self.noise} must be in [0, 1)")
        if bad:
            raise ConfigError("train_readout: " + "; ".join(bad))


def render_batch(n: int, seed: int):
    """(scenes, images uint8 [n, 32, 32, 3]) of the v2 world, held-out instances included."""
    from cns_ray.world.render import render_scene
    from cns_ray.world.scene import sample_scenes

    scenes = sample_scenes(n, seed, allow_held_out=True)
    return scenes, np.stack([render_scene(s) for s in scenes])


def measure_ceilings(readout, n: int, seed: int = CEILING_SEED) -> dict:
    """Per-head accuracy on ``n`` fresh rendered scenes, plus per-slot exact-instance rates."""
    from cns_ray.eval.readout import LOOK_ATTRS, scene_values

    scenes, images = render_batch(n, seed)
    acc = readout.accuracy(images, scenes)
    vals = readout.read_values(images)
    exact = {}
    for slot in ("object", "left", "right"):
        rows = [i for i, s in enumerate(scenes) if f"{slot}.shape" in scene_values(s)]
        truth = [scene_values(scenes[i]) for i in rows]
        exact[slot] = float(np.mean([all(vals[f"{slot}.{a}"][i] == t[f"{slot}.{a}"] for a in LOOK_ATTRS)
                                     for i, t in zip(rows, truth)]))
    return {"n": n, "seed": seed, "accuracy": acc, "exact_instance": exact, "min_accuracy": min(acc.values()),
            "concepts": concept_ceilings(readout)}


def concept_ceilings(readout, n: int = 24) -> dict:
    """Per named concept, :meth:`Readout.instance_match` on its ``n`` references (every size x position x
    background): the readout's ceiling for that concept in the ``object`` slot."""
    from cns_ray.world import concepts as wc

    out = {}
    for c in wc.CONCEPTS:
        m = readout.instance_match(wc.reference_set(c, n, seed=0)[0], c, "object")
        out[c.name] = {"attributes": round(m.attributes, 4), "exact": round(m.exact, 4)}
    return out


def train(cfg: TrainConfig):
    from cns_ray.eval.readout import Readout, ReadoutConfig, ReadoutNet, _pixels, readout_loss, scene_labels

    torch.manual_seed(cfg.seed)
    if cfg.init:
        from cns_ray.eval.readout import load_readout

        net = load_readout(cfg.init).net.train().requires_grad_(True)
        log.info("continuing from %s", cfg.init)
    else:
        net = ReadoutNet(ReadoutConfig())
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(cfg.seed)
    t0, ema = time.monotonic(), None
    for step in range(1, cfg.steps + 1):
        scenes, images = render_batch(cfg.batch, cfg.seed * 1_000_003 + step)
        x = _pixels(images, 32)  # [B, 3, 32, 32]
        sigma = torch.rand(len(x), 1, 1, 1, generator=gen) * cfg.noise  # [B, 1, 1, 1]
        x = x + sigma * torch.randn(x.shape, generator=gen)
        loss = readout_loss(net(x), scene_labels(scenes))
        progress = min(1.0, max(step / cfg.steps, (time.monotonic() - t0) / (cfg.max_minutes * 60)))
        lr = cfg.lr * min(1.0, step / cfg.warmup) * 0.5 * (1 + np.cos(np.pi * progress))
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema = float(loss.detach()) if ema is None else 0.95 * ema + 0.05 * float(loss.detach())
        elapsed = time.monotonic() - t0
        if step % 50 == 0:
            log.info("step %d loss %.4f (ema %.4f) lr %.2e %.0fs", step, float(loss.detach()), ema, lr, elapsed)
        if progress >= 1.0:
            if step < cfg.steps:
                log.warning("stopping at step %d of %d: max_minutes=%.1f spent", step, cfg.steps, cfg.max_minutes)
            break
    return Readout(net), step, time.monotonic() - t0


def load_readout_ceilings(folder: str) -> dict | None:
    import json
    from pathlib import Path

    path = Path(folder) / "ceilings.json"
    return json.loads(path.read_text()) if path.exists() else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.train_readout", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--batch", type=int, default=TrainConfig.batch)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--noise", type=float, default=TrainConfig.noise)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--max-minutes", type=float, default=TrainConfig.max_minutes)
    p.add_argument("--ceiling-n", type=int, default=TrainConfig.ceiling_n)
    p.add_argument("--init", default=None, help="continue from the readout in this folder")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--remeasure", action="store_true", help="only re-measure the ceilings of the readout in --out")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)
    if args.remeasure:
        from cns_ray.eval.readout import load_readout

        readout = load_readout(args.out)
        ceilings = {**measure_ceilings(readout, args.ceiling_n), "training": readout.ceilings.get("training")}
        readout.save(args.out, ceilings)
        log.info("re-measured %s: min %.3f", args.out, ceilings["min_accuracy"])
        return 0
    cfg = TrainConfig(args.steps, args.batch, args.lr, noise=args.noise, seed=args.seed, max_minutes=args.max_minutes,
                      ceiling_n=args.ceiling_n, init=args.init)
    readout, steps, seconds = train(cfg)
    ceilings = measure_ceilings(readout, cfg.ceiling_n)
    before = (load_readout_ceilings(cfg.init) or {}).get("training") if cfg.init else None
    ceilings["training"] = {"steps": steps, "batch": cfg.batch, "seconds": round(seconds), "seed": cfg.seed,
                            "noise": cfg.noise, "lr": cfg.lr, "continued_from": before}
    readout.save(args.out, ceilings)
    log.info("saved %s; ceilings (min %.3f): %s", args.out, ceilings["min_accuracy"],
             {k: round(v, 3) for k, v in ceilings["accuracy"].items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
