"""The mixed-tenant batch path: requests of different tenants in one pipeline call, no shared weight written.

Cross-attention K and V depend only on the text. For a request with tenant delta ``dW`` and text states ``c``
(``[T, in]``), each target layer's output is ``c W^T + c dW^T``: the base layer runs on the whole batch as usual and
each sample gets its own sparse term added, chosen by an explicit sample -> state map (the
:class:`~cns_ray.layers.PerSample` plan of :func:`cns_ray.layers.target_layers`; the map is built from the
classifier-free-guidance layout by :func:`cns_ray.layers.cfg_sample_map`). The term costs ``T * nnz`` multiply-adds,
computed at the first denoising step and reused. The layers are routed for one call, on the generator's single
worker thread; the weights are never written, so a batch may hold any mix of tenants and a failure cannot leave a
tenant's delta behind.

A group whose requests all carry one tenant state (a batch of one, or one tenant's burst) needs no per-sample
term: its delta is swapped into the shared weights for the call and restored exactly, as the swap path does (the
:class:`~cns_ray.layers.Swap` plan, on the generator's single worker thread; restored on error and cancel too). So a
batch of one costs what the swap path costs and gives its image bit for bit.

Results equal the swap path (:func:`cns_ray.serve.swap.generate_images`) up to float rounding (``(W + dW) c`` vs
``W c + dW c``) and, for deterministic samplers (DDIM with ``eta=0``, the default here), do not depend on what else
is in the batch beyond that rounding: each request's initial noise is drawn from its own seed exactly as the swap
path draws it.
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence

import torch

from cns_ray.delta import SparseDelta
from cns_ray.errors import InputError
from cns_ray.layers import PerSample, Swap, cfg_sample_map, target_layers
from cns_ray.serve.prompts import encode_prompt
from cns_ray.serve.steps import check_not_cancelled, step_callback
from cns_ray.serve.swap import GenerationRequest, ServedTenant, png_bytes


def batch_key(req: GenerationRequest, resolution: int) -> tuple:
    """Requests with one key can share a pipeline call (same size, steps, guidance)."""
    return (req.height or resolution, req.width or resolution, req.steps, float(req.guidance_scale))


@torch.no_grad()
def generate_batch(
    base,
    weights: dict[str, torch.Tensor],
    items: Sequence[tuple[ServedTenant, GenerationRequest]],
    fault_marker: str | None = None,
    cancels: Sequence[threading.Event] = (),
    on_step: Callable[[], None] | None = None,
) -> list[list[bytes]]:
    """PNG bytes per request, for requests of any tenants in one pipeline call. With several tenant states in the
    call the shared weights are only read; with one, its delta is swapped in for the call and restored exactly.

    All requests must share :func:`batch_key` and carry a seed (``GenerationRequest.with_seed``). ``fault_marker``
    (tests only): when a prompt contains it, the call fails mid-generation. ``cancels`` (one per request): when all
    are set, the call stops after the current denoising step.
    """
    from diffusers.utils.torch_utils import randn_tensor

    if not items:
        return []
    pipe = base.pipeline
    keys = {batch_key(r, base.resolution) for _, r in items}
    if len(keys) != 1:
        raise InputError(f"one batch needs one (height, width, steps, guidance), got {sorted(keys)}: group by batch_key")
    if any(r.seed is None for _, r in items):
        raise InputError("generate_batch needs a seed per request: call GenerationRequest.with_seed() first")
    height, width, steps, guidance = keys.pop()
    dtype, device = pipe.unet.dtype, pipe.unet.device
    per_tenant: dict[tuple, SparseDelta] = {}  # (tenant state, Cones concepts named) -> its delta
    cond, uncond, latents, keys = [], [], [], []
    for served, req in items:
        prompt, named = served.cones_in(req.prompt)  # as the swap path: Cones neurons shut (-W c), shut wins
        negative, _ = served.cones_in(req.negative_prompt)
        key = (id(served), tuple(sorted(named)))
        if key not in per_tenant:
            per_tenant[key] = served.delta_for(named, weights)
        c = encode_prompt(pipe.tokenizer, pipe.text_encoder, prompt, served.tokens)  # [1, T, D]
        u = encode_prompt(pipe.tokenizer, pipe.text_encoder, negative, served.tokens)  # [1, T, D]
        shape = (req.n, pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
        gen = torch.Generator(device="cpu").manual_seed(int(req.seed))
        latents.append(randn_tensor(shape, generator=gen, device=device, dtype=dtype))  # as the pipeline draws it
        cond.append(c.expand(req.n, -1, -1))
        uncond.append(u.expand(req.n, -1, -1))
        keys += [key] * req.n
    if len(per_tenant) == 1:  # one tenant state: swap it in once (exact restore), no per-sample term
        plan = Swap(per_tenant[keys[0]], base.base_id, check_entries=False)
    else:
        state_of = {k: i for i, k in enumerate(per_tenant)}
        sample_to_state = cfg_sample_map([state_of[k] for k in keys], guidance, pipe.unet.config.time_cond_proj_dim)
        plan = PerSample(list(per_tenant.values()), sample_to_state, base.base_id, check_entries=False)  # [S]
    check_not_cancelled(list(cancels))
    callback = step_callback(list(cancels), [r.prompt for _, r in items], steps, fault_marker, on_step)

    with target_layers(pipe.unet, plan):
        out = pipe(
            prompt_embeds=torch.cat(cond).to(dtype),  # [N, T, D], one row per image
            negative_prompt_embeds=torch.cat(uncond).to(dtype),
            latents=torch.cat(latents),  # [N, C, h, w]
            height=height,
            width=width,
            num_inference_steps=steps,
            guidance_scale=guidance,
            num_images_per_prompt=1,
            output_type="pil",
            callback_on_step_end=callback,
        )
    images = [png_bytes(im) for im in out.images]
    result, start = [], 0
    for _, req in items:
        result.append(images[start : start + req.n])
        start += req.n
    return result

