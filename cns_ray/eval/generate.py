"""Generation for evaluation: a state's delta swapped into the base (:class:`cns_ray.layers.Swap`, restored exactly),
placeholders resolved, numpy images out."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from cns_ray.delta import LayerDelta, SparseDelta
from cns_ray.layers import Swap, target_layers
from cns_ray.serve.prompts import encode_prompt


def _on(delta: SparseDelta, weights: dict[str, torch.Tensor]) -> SparseDelta:
    layers = {}
    for n, ld in delta.layers.items():
        w = weights[n]
        layers[n] = LayerDelta(ld.index.to(w.device, torch.int64), ld.value.to(w.device, w.dtype))
    return SparseDelta(delta.base_id, dict(delta.shapes), layers)


def _with_cones(base, delta: SparseDelta | None, tokens, prompt: str, shut, weights) -> tuple[SparseDelta | None, str]:
    """As serving does it (cns_ray.serve.swap.ServedTenant): the Cones placeholders ``prompt`` names are dropped from
    its text and their neurons (the union) shut on top of ``delta`` (shut wins)."""
    from cns_ray.serve.swap import ServedTenant

    st = ServedTenant(tenant="eval", version=None, delta=delta if delta is not None else SparseDelta.empty(base.base_id),
                      tokens=tokens, shut=shut)
    text, named = st.cones_in(prompt)
    return (st.delta_for(named, weights) if named else delta), text


@torch.no_grad()
def generate(base, delta: SparseDelta | None, tokens: dict[str, torch.Tensor], prompt: str, n: int, seed: int,
             steps: int, guidance: float, shut: dict[str, dict[str, torch.Tensor]] | None = None) -> np.ndarray:
    """uint8 [n, R, R, 3] images of ``prompt`` with ``delta`` applied (base weights restored after); ``shut``: the
    state's Cones concepts (placeholder -> layer -> indices), shut where the prompt names them."""
    pipe = base.pipeline
    weights = base.target_weights()
    if shut:
        delta, prompt = _with_cones(base, delta, tokens, prompt, shut, weights)
    cond = encode_prompt(pipe.tokenizer, pipe.text_encoder, prompt, tokens)  # [1, T, D]
    uncond = encode_prompt(pipe.tokenizer, pipe.text_encoder, "", tokens)  # [1, T, D]
    dtype = pipe.unet.dtype
    has = delta is not None and delta.layers
    ctx = target_layers(pipe.unet, Swap(_on(delta, weights), base.base_id)) if has else nullcontext()
    gen = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    with ctx:
        out = pipe(prompt_embeds=cond.to(dtype), negative_prompt_embeds=uncond.to(dtype), height=base.resolution,
                   width=base.resolution, num_inference_steps=steps, guidance_scale=guidance, num_images_per_prompt=n,
                   generator=gen, output_type="np")
    return np.clip(np.round(out.images * 255.0), 0, 255).astype(np.uint8)  # [n, R, R, 3]


def save_grid(rows: list[np.ndarray], path, scale: int = 3) -> None:
    """Rows of uint8 [k, H, W, 3] images (ragged rows padded with black) as one PNG, nearest-upscaled."""
    from PIL import Image

    width = max(len(r) for r in rows)
    h, w = rows[0].shape[1:3]
    canvas = np.zeros((len(rows) * (h + 2), width * (w + 2), 3), dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            canvas[i * (h + 2) : i * (h + 2) + h, j * (w + 2) : j * (w + 2) + w] = img
    Image.fromarray(canvas).resize((canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST).save(path)
