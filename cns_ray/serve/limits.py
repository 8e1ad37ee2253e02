"""What one generation request may ask for, derived from the served base, and the typed request bodies.

A request is priced at ``n * steps * height * width`` (what it costs the replica's single worker thread). The
limits follow the base: sides up to 2x its native side and a cost budget of ``max_n`` images at native size with
twice the default steps, unless ServingConfig sets ``max_size`` / ``max_request_cost``. Bodies are pydantic models
with strict integers (``true``, ``"2"`` and ``2.0`` are not numbers of images, steps, seeds or versions).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, StrictFloat, StrictInt, field_validator

from cns_ray.errors import InputError
from cns_ray.serve.config import ServingConfig
from cns_ray.serve.swap import GenerationRequest


def _encodable(v: str, field: str) -> str:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{field} has a character that is not valid Unicode text ({e.reason} at {e.start}): "
                         "send UTF-8 text without lone surrogates") from None
    return v


class ImageRequest(BaseModel):
    """OpenAI-style image generation body (extra OpenAI fields such as ``model`` are ignored)."""

    model_config = ConfigDict(extra="ignore")
    prompt: str
    n: StrictInt = 1
    size: str | None = None
    seed: StrictInt | None = None
    steps: StrictInt | None = None
    guidance_scale: StrictFloat | StrictInt | None = None
    negative_prompt: str = ""
    response_format: str = "b64_json"

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _utf8(cls, v: str, info) -> str:
        return _encodable(v, info.field_name)


class RollbackRequest(BaseModel):
    """``{"version": V}``: a strict integer."""

    model_config = ConfigDict(extra="forbid")
    version: StrictInt


@dataclass(frozen=True)
class Limits:
    """The effective limits of one endpoint for its served base."""

    native: int
    """The base's native image side (the default size)."""
    max_side: int
    max_cost: int
    max_n: int
    max_steps: int
    default_steps: int
    default_guidance: float
    max_prompt_chars: int
    default_size: int

    @classmethod
    def for_base(cls, cfg: ServingConfig, native: int, sampler_max_steps: int = 999) -> "Limits":
        """``sampler_max_steps``: the most steps the base's scheduler can take (its training timesteps)."""
        max_side = cfg.max_size or 2 * native
        max_cost = cfg.max_request_cost or cfg.max_n * 2 * cfg.default_steps * native * native
        return cls(native, max_side, max_cost, cfg.max_n, min(cfg.max_steps, sampler_max_steps), cfg.default_steps, cfg.default_guidance,
                   cfg.max_prompt_chars, cfg.default_size or native)

    def describe(self) -> dict:
        return {"native_size": self.native, "max_side": self.max_side, "max_request_cost": self.max_cost,
                "max_n": self.max_n, "max_steps": self.max_steps}


_SIZE_RE = re.compile(r"(\d{1,5})x(\d{1,5})")


def parse_size(size: str | None, limits: Limits) -> tuple[int, int]:
    """``"512x512"`` (width x height) -> (height, width), checked against the limits."""
    if size is None:
        return limits.default_size, limits.default_size
    m = _SIZE_RE.fullmatch(size.strip())
    if not m:
        raise InputError(f"size {size[:40]!r} must look like '512x512' (width x height)")
    w, h = int(m.group(1)), int(m.group(2))
    for v in (w, h):
        if v < 8 or v > limits.max_side or v % 8:
            raise InputError(f"size {size!r}: each side must be a multiple of 8 in [8, {limits.max_side}] "
                             f"(at most 2x the base's native {limits.native} px unless the operator set max_size)")
    return h, w


def build_generation(body: ImageRequest, limits: Limits) -> GenerationRequest:
    """Check ``body`` against ``limits`` (every problem at once); the typed request for the generator."""
    problems = []
    if not body.prompt.strip():
        problems.append("prompt is empty: describe the image, e.g. 'a photo of <tok> dog'")
    if len(body.prompt) > limits.max_prompt_chars:
        problems.append(f"prompt has {len(body.prompt)} characters, the limit is {limits.max_prompt_chars}: shorten it")
    if len(body.negative_prompt) > limits.max_prompt_chars:
        problems.append(f"negative_prompt has {len(body.negative_prompt)} characters, the limit is {limits.max_prompt_chars}")
    if not 1 <= body.n <= limits.max_n:
        problems.append(f"n={body.n} must be in [1, {limits.max_n}]")
    steps = limits.default_steps if body.steps is None else body.steps
    if not 1 <= steps <= limits.max_steps:
        problems.append(f"steps={steps} must be in [1, {limits.max_steps}]")
    guidance = limits.default_guidance if body.guidance_scale is None else float(body.guidance_scale)
    if not 0 <= guidance <= 50:
        problems.append(f"guidance_scale={guidance} must be in [0, 50]")
    if body.seed is not None and not 0 <= body.seed < 2**63:
        problems.append(f"seed={body.seed} must be in [0, 2**63)")
    if body.response_format not in ("b64_json", "png"):
        problems.append(f"response_format={body.response_format[:20]!r} must be 'b64_json' or 'png'")
    elif body.response_format == "png" and body.n != 1:
        problems.append("response_format 'png' returns one image: use n=1 or 'b64_json'")
    if problems:
        raise InputError("; ".join(problems))
    height, width = parse_size(body.size, limits)
    cost = body.n * steps * height * width
    if cost > limits.max_cost:
        raise InputError(
            f"request costs n*steps*height*width = {body.n}*{steps}*{height}*{width} = {cost}, the limit is "
            f"{limits.max_cost}: ask for fewer images, fewer steps or a smaller size"
        )
    return GenerationRequest(prompt=body.prompt, n=body.n, height=height, width=width, steps=steps,
                             guidance_scale=guidance, seed=body.seed, negative_prompt=body.negative_prompt)
