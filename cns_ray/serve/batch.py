"""The mixed-tenant batch path: requests of different tenants in one pipeline call, no shared weight written.

Cross-attention K and V depend only on the text. For a request with tenant delta ``dW`` and text states ``c``
(``[T, in]``), each target layer's output is ``c W^T + c dW^T``: the base layer runs on the whole batch as usual and
a forward hook adds each sample's own sparse term (``dW`` has ``nnz`` entries ``(row, col, value)``, so the term is
``out[:, row] += c[:, col] * value``, ``T * nnz`` multiply-adds, computed at the first denoising step and reused). The hooks live for one call, on the generator's
single worker thread; the weights are never written, so a batch may hold any mix of tenants and a failure cannot
leave a tenant's delta behind.

A group whose requests all carry one tenant state (a batch of one, or one tenant's burst) needs no per-sample
term: its delta is swapped into the shared weights for the call and restored exactly, as the swap path does
(:func:`cns_ray.delta.swapped`, on the generator's single worker thread; restored on error and cancel too). So a
batch of one costs what the swap path costs and gives its image bit for bit.

Results equal the swap path (:func:`cns_ray.serve.swap.generate_images`) up to float rounding (``(W + dW) c`` vs
``W c + dW c``) and, for deterministic samplers (DDIM with ``eta=0``, the default here), do not depend on what else
is in the batch beyond that rounding: each request's initial noise is drawn from its own seed exactly as the swap
path draws it.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from cns_ray.delta import SparseDelta, swapped
from cns_ray.errors import InputError
from cns_ray.serve.prompts import encode_prompt
from cns_ray.serve.steps import check_not_cancelled, step_callback
from cns_ray.serve.swap import GenerationRequest, ServedTenant, png_bytes


@dataclass(frozen=True)
class SampleDelta:
    """One layer's delta in gather form: ``out[..., rows] += x[..., cols] * values``. All [nnz]."""

    rows: torch.Tensor  # int64
    cols: torch.Tensor  # int64
    values: torch.Tensor  # the layer's dtype


def sample_deltas(delta: SparseDelta, weights: dict[str, torch.Tensor], base_id: str) -> dict[str, SampleDelta]:
    """Per layer, ``delta`` in gather form. Checks base_id, layer names and shapes (entries were validated at load)."""
    delta.validate({n: tuple(w.shape) for n, w in weights.items()}, base_id, check_entries=False)
    out = {}
    for name, ld in delta.layers.items():
        w = weights[name]  # [out, in]
        idx = ld.index.to(device=w.device, dtype=torch.int64)
        out[name] = SampleDelta(idx // w.shape[1], idx % w.shape[1], ld.value.to(device=w.device, dtype=w.dtype))
    return out


def add_sample_delta(out: torch.Tensor, x: torch.Tensor, d: SampleDelta) -> None:
    """In place: ``out[T, out_features] += x[T, in_features] @ dW^T`` for one sample's sparse ``dW``."""
    out.index_add_(-1, d.rows, x.index_select(-1, d.cols) * d.values)  # [T, nnz] summed into [T, out]


@contextmanager
def per_sample_deltas(modules: dict[str, torch.nn.Module], deltas: Sequence[dict[str, SampleDelta]]) -> Iterator[None]:
    """While active, target linear ``name`` adds ``deltas[s % len(deltas)][name]`` to sample ``s`` of its output.

    ``deltas`` has one entry per image; the pipeline's classifier-free guidance doubles the batch as
    ``[uncond images, cond images]``, hence ``s % len(deltas)``. The text states are the same tensor at every
    denoising step, so each layer computes its term once per call and adds it after (K/V-sized memory per layer,
    freed with the hooks). Hooks are removed on exit, error or cancel.
    """
    handles = []
    n = len(deltas)

    def hook_for(name: str):
        memo: list = []  # [(x, term)]: x is held, so ``is`` cannot match a new tensor at a reused address

        def hook(_module, inputs, out):  # inputs[0]: [S, T, in]; out: [S, T, out]
            x = inputs[0]
            if memo and memo[0][0] is x:  # the same text states as the previous denoising step
                return out.add_(memo[0][1])
            if x.shape[0] % n:
                raise RuntimeError(f"batch of {x.shape[0]} at {name} is not a multiple of the {n} images")
            term = torch.zeros_like(out)  # [S, T, out]: every sample's c dW^T
            for s in range(x.shape[0]):
                d = deltas[s % n].get(name)
                if d is not None:
                    add_sample_delta(term[s], x[s], d)
            memo[:] = [(x, term)]
            return out.add_(term)

        return hook

    try:
        for name in {n for ds in deltas for n in ds}:
            handles.append(modules[name].register_forward_hook(hook_for(name)))
        yield
    finally:
        for h in handles:
            h.remove()


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

    from cns_ray.targets import find_target_modules

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
    if len(per_tenant) == 1:  # one tenant state: swap it in once (exact restore), no per-sample hooks
        applied = swapped(weights, per_tenant[keys[0]], base.base_id, check_entries=False)
    else:
        gather = {k: sample_deltas(d, weights, base.base_id) for k, d in per_tenant.items()}
        applied = per_sample_deltas(find_target_modules(pipe.unet), [gather[k] for k in keys])
    check_not_cancelled(list(cancels))
    callback = step_callback(list(cancels), [r.prompt for _, r in items], steps, fault_marker, on_step)

    with applied:
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

