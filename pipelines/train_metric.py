"""Train the toy metric model (CLIP-style, :mod:`cns_ray.eval.metric_model`) on world-like scenes; ~minutes on CPU.

    python -m pipelines.train_metric --out cns_ray/data/eval/toy-clip [--steps 1500] [--seed 0]

Its scenes span every shape (training world and held-out) and every pattern, captioned with what is drawn, so its
image space separates the held-out concepts the base model never saw.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("train_metric")


def metric_corpus(n: int, seed: int):
    """(images uint8 [n, 32, 32, 3], captions): random shapes x patterns x world contexts."""
    from cns_ray.world import render
    from cns_ray.world.concepts import FILLS
    from cns_ray.world.scene import BACKGROUNDS, COLOURS, POSITIONS, SIZES, Scene

    rng = np.random.default_rng(seed)
    shapes, colours, patterns = sorted(render.SHAPE_MASKS), sorted(COLOURS) + ["white"], sorted(FILLS)
    images, captions = [], []
    for _ in range(n):
        shape = shapes[rng.integers(len(shapes))]
        pattern = patterns[rng.integers(len(patterns))]
        c1 = colours[rng.integers(len(colours) - 1)]  # first colour never white
        c2 = colours[rng.integers(len(colours))]
        while c2 == c1:
            c2 = colours[rng.integers(len(colours))]
        one = pattern in ("plain", "striped")
        fill = FILLS[pattern](c1) if one else FILLS[pattern](c1, c2)
        size, pos, bg = (list(d)[rng.integers(len(d))] for d in (SIZES, POSITIONS, BACKGROUNDS))
        scene = Scene("circle", "red", size, "plain", pos, bg, (float(rng.uniform(-1.5, 1.5)), float(rng.uniform(-1.5, 1.5))))
        centre, half = render.scene_geometry(scene)
        images.append(render.render_object(render.SHAPE_MASKS[shape], fill, centre, half, bg))
        colour_words = c1 if one else f"{c1} and {c2}"
        captions.append(f"a {size} {pattern} {colour_words} {shape} shape at the {pos} on a {bg} background")
    return np.stack(images), captions


def vocabulary(captions: list[str]) -> tuple[str, ...]:
    from cns_ray.eval.metric_model import words_of

    words = sorted({w for c in captions for w in words_of(c)})
    return ("<pad>", "<unk>", *words)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.train_metric", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--images", type=int, default=6000)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from cns_ray.eval.metric_model import MetricConfig, ToyClip, _pixels

    t0 = time.monotonic()
    images, captions = metric_corpus(args.images, args.seed)
    model = ToyClip(MetricConfig(vocab=vocabulary(captions)))
    pixels = _pixels(images, 32)  # [N, 3, 32, 32]
    ids = model.tokenize(captions)  # [N, L]
    log.info("corpus %d images in %.1fs, vocab %d", len(captions), time.monotonic() - t0, len(model.cfg.vocab))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(args.seed)
    for step in range(1, args.steps + 1):
        pick = torch.randperm(len(captions), generator=gen)[: args.batch]
        x = pixels[pick]
        shift = torch.randint(-1, 2, (2,), generator=gen).tolist()  # small translation: robustness to jitter
        x = torch.roll(x, shifts=shift, dims=(2, 3))
        img = F.normalize(model.image(x), dim=-1)  # [B, D]
        txt = F.normalize(model.text(ids[pick]), dim=-1)  # [B, D]
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T  # [B, B]
        # duplicates of one caption in a batch are all positives
        same = (ids[pick].unsqueeze(1) == ids[pick].unsqueeze(0)).all(-1).float()  # [B, B]
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean() + torch.sum(-target * logits.log_softmax(0).T, 1).mean())
        lr = args.lr * min(1.0, step / 100) * 0.5 * (1 + np.cos(np.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            acc = float((logits.argmax(1) == torch.arange(len(pick))).float().mean())
            log.info("step %d loss %.3f batch-acc %.2f (%.0fs)", step, float(loss.detach()), acc, time.monotonic() - t0)
    model.eval()
    model.save(args.out)
    log.info("saved %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
