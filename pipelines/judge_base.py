"""Judge a base checkpoint on what it still misses: patterns and markings, per value (minutes on one CPU thread).

    python -m pipelines.judge_base .train/tiny-v3 [--n 150] [--seed 777]

Generates one image per fresh one-object world caption (20 DDIM steps, guidance 4) and reads it with the attribute
readout: per head the accuracy, per pattern / marking value the fraction read right (and what the rest read as),
and the palette recall (exact pixel colours). It also prints how far apart the text encoder puts captions that
differ only in the pattern word, against two that differ only in a colour word (the largest per-row distance): a
pattern the text encoder does not separate cannot be drawn. Last, the readout of one-step x0 predictions from rendered
truth noised to t = 300, 600, 999 (:func:`denoise_readout`): where along the noise levels the pattern is lost. One JSON line per run (``--json``) or a readable table.
``cns eval --base-only [--readout-only]`` is the full sanity check (one- and two-object captions, the toy CLIP).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter


def text_separation(base) -> dict[str, float]:
    """Largest per-row distance between the text encoder's outputs of captions differing in one word."""
    import torch

    tok, te = base.pipeline.tokenizer, base.pipeline.text_encoder

    def enc(prompt: str) -> torch.Tensor:
        ids = tok([prompt], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
        with torch.no_grad():
            return te(ids.to(te.device))[0][0].float()  # [T, D]

    template = "a large {} red and blue circle at the center on a white background"
    pairs = {"striped/dotted": ("striped", "dotted"), "striped/checkered": ("striped", "checkered"),
             "plain/striped": ("plain", "striped"), "dotted/checkered": ("dotted", "checkered")}
    out = {k: float((enc(template.format(a)) - enc(template.format(b))).norm(dim=-1).max()) for k, (a, b) in pairs.items()}
    colour = "a large striped {} and blue circle at the center on a white background"
    out["red/green (colour)"] = float((enc(colour.format("red")) - enc(colour.format("green"))).norm(dim=-1).max())
    return {k: round(v, 2) for k, v in out.items()}


DENOISE_T = (300, 600, 999)
"""Noise levels of the denoising check (of 1000; at 999 the image is gone and the prediction is the text's alone)."""


def denoise_readout(base, readout, n: int = 60, seed: int = 5) -> dict[int, dict[str, float]]:
    """Pattern and marking readout of the base's one-step x0 prediction from rendered truth noised to each of
    :data:`DENOISE_T`, full captions, patterned objects: where sampling loses a pattern. A base that reads
    patterns at 300-600 but not at 999 denoises them but cannot place them from the text (the mean colour is
    what it predicts from noise alone)."""
    import numpy as np
    import torch
    from diffusers import DDPMScheduler

    from cns_ray.serve.prompts import encode_prompt
    from cns_ray.world.render import render_scene
    from cns_ray.world.scene import WorldSpec, caption, sample_scenes

    pipe = base.pipeline
    scenes = [s for s in sample_scenes(8 * n, seed=seed, spec=WorldSpec(p_two=0.0))
              if s.objects[0].look.pattern != "plain"][:n]
    truth = torch.tensor(np.stack([render_scene(s, base.resolution) for s in scenes])).permute(0, 3, 1, 2)
    z0 = pipe.vae.encode(truth.float() / 127.5 - 1).latent_dist.mean  # [n, C, h, w]
    cond = torch.cat([encode_prompt(pipe.tokenizer, pipe.text_encoder, caption(s), {}) for s in scenes])  # [n, T, D]
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for t in DENOISE_T:
        tt = torch.full((n,), t)
        noisy = noise_sched.add_noise(z0, torch.randn(z0.shape, generator=gen), tt)
        with torch.no_grad():
            x0 = pipe.unet(noisy.to(pipe.unet.dtype), tt, encoder_hidden_states=cond.to(pipe.unet.dtype)).sample
        img = pipe.vae.decode(x0.float().clamp(-1, 1)).sample  # [n, 3, R, R] in [-1, 1]
        img = ((img.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        values = readout.read_values(img)
        out[t] = {a: round(float(np.mean([values[f"object.{a}"][i] == getattr(s.objects[0].look, a)
                                          for i, s in enumerate(scenes)])), 3) for a in ("pattern", "marking")}
    return out


def judge(base, n: int = 150, seed: int = 777, readout=None) -> dict:
    import numpy as np

    from cns_ray.eval.generate import generate
    from cns_ray.eval.readout import load_readout
    from cns_ray.eval.sanity import palette_by_slot
    from cns_ray.world.scene import WorldSpec, caption, sample_scenes

    readout = readout or load_readout()
    scenes = sample_scenes(n, seed=seed, spec=WorldSpec(p_two=0.0))
    images = np.concatenate([generate(base, None, {}, caption(s), 1, i, 20, 4.0) for i, s in enumerate(scenes)])
    values = readout.read_values(images)
    out = {"base_id": base.base_id, "n": n, "seed": seed,
           "readout": {k.split(".", 1)[1]: round(v, 3) for k, v in readout.accuracy(images, scenes).items()
                       if k.startswith("object.")},
           "palette": round(palette_by_slot(images, scenes)["object"], 3)}
    for attr in ("pattern", "marking"):
        per: dict[str, dict] = {}
        for want in sorted({getattr(s.objects[0].look, attr) for s in scenes}):
            got = Counter(values[f"object.{attr}"][i] for i, s in enumerate(scenes) if getattr(s.objects[0].look, attr) == want)
            total = sum(got.values())
            per[want] = {"right": round(got[want] / total, 2), "n": total, "read_as": dict(got.most_common(3))}
        out[f"per_{attr}"] = per
    out["text_separation"] = text_separation(base)
    out["denoise"] = {str(t): v for t, v in denoise_readout(base, readout, n=min(n, 60)).items()}
    return out


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(prog="python -m pipelines.judge_base", description=__doc__.splitlines()[0])
    p.add_argument("base_model", help="a diffusers folder (e.g. a train_base --out folder) or a built-in name")
    p.add_argument("--n", type=int, default=150, help="one-object captions (default %(default)s)")
    p.add_argument("--seed", type=int, default=777, help="caption seed (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    args = p.parse_args(argv)
    import torch

    from cns_ray.errors import CNSError
    from cns_ray.models import load_base_model

    torch.set_num_threads(1)
    try:
        r = judge(load_base_model(args.base_model), args.n, args.seed)
    except CNSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"base {r['base_id']}: {r['n']} one-object captions (seed {r['seed']}); palette recall {r['palette']:.2f}")
    print("readout: " + ", ".join(f"{k} {v:.2f}" for k, v in r["readout"].items()))
    for attr in ("pattern", "marking"):
        print(f"per {attr}: " + "; ".join(f"{k} {v['right']:.2f} (n {v['n']}, read as {v['read_as']})"
                                          for k, v in r[f"per_{attr}"].items()))
    print("denoised from truth at t (pattern / marking): "
          + ", ".join(f"{t}: {v['pattern']:.2f} / {v['marking']:.2f}" for t, v in r["denoise"].items()))
    print("text separation (max row distance): " + ", ".join(f"{k} {v}" for k, v in r["text_separation"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
