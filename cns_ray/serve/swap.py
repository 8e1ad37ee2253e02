"""The serving core, without Ray: one tenant's state made device-resident, and generation with it swapped in.

``generate_images`` encodes the prompt with the tenant's placeholders (cns_ray.serve.prompts), swaps the
tenant's delta into the shared UNet target weights (the :class:`~cns_ray.layers.Swap` plan of
:func:`cns_ray.layers.target_layers`: gather originals, ``index_add_``), runs the pipeline and restores the originals
by copying them back, on success, error and cancellation alike. Cones concepts named in the
prompt (by their placeholder, which is dropped from the text: Cones learns no embedding) have their neurons shut:
``-W`` is added there on top of the tenant's delta (:func:`cns_ray.cones.with_shut`), so **a shut weight is zero
whatever the CNS delta says there**; the restore is the same exact copy-back. It writes shared weights,
so callers run it one at a time per base model (the generator's single worker thread; the CLI's one process).
"""

from __future__ import annotations

import io
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import re

import torch

from cns_ray import cones
from cns_ray.delta import LayerDelta, SparseDelta
from cns_ray.errors import DeltaValidationError, InputError
from cns_ray.layers import Swap, target_layers
from cns_ray.serve.prompts import encode_prompt
from cns_ray.serve.steps import InjectedFault, check_not_cancelled, step_callback

log = logging.getLogger(__name__)

__all__ = ["GenerationRequest", "InjectedFault", "ServedTenant", "generate_images", "png_bytes", "weights_digest"]


@dataclass
class ServedTenant:
    """A tenant's state ready to serve: delta and tokens on the replica's device."""

    tenant: str
    version: int | None
    delta: SparseDelta
    tokens: dict[str, torch.Tensor]  # placeholder -> [D]
    concepts: list[str] = field(default_factory=list)
    loaded_at: float = field(default_factory=time.monotonic)
    shut: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    """Cones concepts: placeholder -> layer -> int64 flat indices on ``device`` (validated at load)."""
    joint: list[tuple[frozenset[str], dict[str, torch.Tensor]]] = field(default_factory=list)
    """Joint Cones refinements (``stats["joint_of"]``): (the placeholders a prompt must all name, extra indices)."""

    def cones_in(self, prompt: str) -> tuple[str, list[str]]:
        """(the prompt without this tenant's Cones placeholders, the placeholders it named, in order)."""
        if not self.shut:
            return prompt, []
        pattern = "|".join(re.escape(t) for t in sorted(self.shut, key=len, reverse=True))  # "<kit2>" before "<kit>"
        named = re.findall(pattern, prompt)
        return " ".join(re.sub(pattern, " ", prompt).split()), list(dict.fromkeys(named))

    def delta_for(self, named: list[str], weights: dict[str, torch.Tensor]) -> SparseDelta:
        """The tenant's delta with the neurons of the Cones concepts ``named`` shut (their union; shut wins)."""
        if not named:
            return self.delta
        unknown = [t for t in named if t not in self.shut]
        if unknown:
            raise InputError(f"{unknown} are not Cones concepts of tenant {self.tenant!r} (it has {sorted(self.shut)})")
        extra = [idx for need, idx in self.joint if need <= set(named)]  # joint refinements whose subjects are all named
        return cones.with_shut(self.delta, weights, cones.union([*(self.shut[t] for t in named), *extra]))

    @classmethod
    def from_state(cls, state, device: str | torch.device, dtype: torch.dtype) -> "ServedTenant":
        """From a store ``TenantState``: int64 indices and values in the weights' dtype, on ``device``."""
        d = state.delta
        layers = {
            n: LayerDelta(ld.index.to(device=device, dtype=torch.int64), ld.value.to(device=device, dtype=dtype))
            for n, ld in d.layers.items()
        }
        bad = [n for n, ld in layers.items() if not bool(torch.isfinite(ld.value).all())]
        if bad:  # e.g. fp32 values that overflow the served dtype
            raise DeltaValidationError(
                [f"layer {n!r} has values that are not finite in {dtype} (overflow?): serve in float32" for n in bad],
                source=f"tenant {state.tenant!r} version {state.version}",
            )
        tokens = {t: v.detach().to(device=device, dtype=torch.float32) for t, v in state.tokens.items()}
        def on_device(c):
            return {n: i.to(device=device, dtype=torch.int64) for n, i in c.neurons.items()}

        single = [c for c in state.concepts if c.method == "cones" and not c.stats.get("joint_of")]
        shut = {c.token: on_device(c) for c in single}
        by_name = {c.name: c.token for c in single}
        joint = [(frozenset(by_name[n] for n in c.stats["joint_of"]), on_device(c)) for c in state.concepts
                 if c.method == "cones" and c.stats.get("joint_of") and all(n in by_name for n in c.stats["joint_of"])]
        return cls(
            shut=shut,
            joint=joint,
            tenant=state.tenant,
            version=state.version,
            delta=SparseDelta(d.base_id, dict(d.shapes), layers),
            tokens=tokens,
            concepts=[c.name for c in state.concepts],
        )

    @classmethod
    def empty(cls, tenant: str, base_id: str) -> "ServedTenant":
        """A tenant with no versions yet: served with the base model."""
        return cls(tenant=tenant, version=None, delta=SparseDelta.empty(base_id), tokens={})


@dataclass(frozen=True)
class GenerationRequest:
    """One validated generation request (limits are checked by the ingress)."""

    prompt: str
    n: int = 1
    height: int | None = None
    """Image height in pixels; None = the base model's native resolution (``base.resolution``)."""
    width: int | None = None
    """Image width in pixels; None = the base model's native resolution."""
    steps: int = 25
    guidance_scale: float = 7.5
    seed: int | None = None
    negative_prompt: str = ""

    def with_seed(self) -> "GenerationRequest":
        if self.seed is not None:
            return self
        return GenerationRequest(**{**self.__dict__, "seed": random.randrange(2**31)})


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@torch.no_grad()
def generate_images(
    base,
    weights: dict[str, torch.Tensor],
    served: ServedTenant,
    req: GenerationRequest,
    fault_marker: str | None = None,
    cancel: threading.Event | None = None,
    on_step: Callable[[], None] | None = None,
) -> list[bytes]:
    """PNG bytes of ``req.n`` images of ``req.prompt`` for ``served``'s tenant on ``base``.

    ``weights`` are the base's live target weights (name -> [out, in]); they are bit-identical after return or raise.
    ``cancel`` set: the call stops after the current denoising step (RequestCancelledError), weights restored.
    """
    if req.seed is None:
        raise InputError("generate_images needs a seed: call GenerationRequest.with_seed() first")
    pipe = base.pipeline
    prompt, named = served.cones_in(req.prompt)
    negative, _ = served.cones_in(req.negative_prompt)  # a Cones placeholder there is dropped, shuts nothing
    delta = served.delta_for(named, weights)
    cond = encode_prompt(pipe.tokenizer, pipe.text_encoder, prompt, served.tokens)  # [1, T, D]
    uncond = encode_prompt(pipe.tokenizer, pipe.text_encoder, negative, served.tokens)  # [1, T, D]
    dtype = pipe.unet.dtype
    cancels = [cancel] if cancel is not None else []
    check_not_cancelled(cancels)
    callback = step_callback(cancels, [req.prompt], req.steps, fault_marker, on_step)
    generator = torch.Generator(device="cpu").manual_seed(int(req.seed))
    # Entries were validated once when the state was loaded (store.load + ServedTenant.from_state) and are
    # immutable since: per request only base_id, layer names and shapes are re-checked.
    with target_layers(pipe.unet, Swap(delta, base.base_id, check_entries=False)):
        out = pipe(
            prompt_embeds=cond.to(dtype),
            negative_prompt_embeds=uncond.to(dtype),
            height=req.height or base.resolution,
            width=req.width or base.resolution,
            num_inference_steps=req.steps,
            guidance_scale=req.guidance_scale,
            num_images_per_prompt=req.n,
            generator=generator,
            output_type="pil",
            callback_on_step_end=callback,
        )
    return [png_bytes(im) for im in out.images]


def weights_digest(base) -> str:
    """sha256 over every UNet and text-encoder parameter and buffer (bit-level), for invariant checks."""
    import hashlib

    h = hashlib.sha256()
    for prefix, module in (("unet", base.unet), ("text_encoder", base.text_encoder)):
        for name, t in sorted(module.state_dict().items()):
            h.update(f"{prefix}.{name}".encode())
            h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
