"""Concept-neuron selection on a base model: text encoding + the pure mask math of :mod:`cns_ray.neurons`.

No Ray here (sharded calibration lives in :mod:`cns_ray.jobs.calibrate`), and no store writes except through the
optional cache argument.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from cns_ray import neurons
from cns_ray.config import SelectionConfig
from cns_ray.data import data_path
from cns_ray.errors import InputError
from cns_ray.models.text import token_norms

CAPTION_TEMPLATE = "a photo of a {class_word}"


BASE_PROMPTS_FILE = "calibration_prompts.txt"
"""A base model folder may ship its own calibration prompts (its domain), one per line, beside model_index.json."""


def load_prompts(path: str | Path | None = None, base=None) -> list[str]:
    """Calibration prompts, one per line of ``path``; else those the base model's folder ships
    (``BASE_PROMPTS_FILE``, e.g. the toy-world model's world captions); else the built-in set (20 diverse prompts)."""
    if path:
        p = Path(path)
    else:
        folder = getattr(base, "folder", None)
        own = Path(folder) / BASE_PROMPTS_FILE if folder else None
        p = own if own is not None and own.exists() else data_path("calibration_prompts.txt")
    if not p.exists():
        raise InputError(f"calibration prompt file {str(p)!r} does not exist: give a text file, one prompt per line")
    prompts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip() and not line.startswith("#")]
    if len(prompts) < 2:
        raise InputError(f"{p} has {len(prompts)} prompt(s); general neurons need at least 2 (20 recommended)")
    return prompts


def calib_key(base_id: str, prompts: list[str], cfg: SelectionConfig) -> str:
    """Cache key of a general-mask set: (base model, prompt set, select_ratio)."""
    h = hashlib.sha256(json.dumps({"base": base_id, "prompts": prompts, "ratio": cfg.select_ratio}).encode())
    return h.hexdigest()[:16]


def general_masks_local(base, prompts: list[str], cfg: SelectionConfig) -> neurons.Masks:
    """General neurons of ``base`` over ``prompts`` in this process (the reference the sharded job must match)."""
    norms = token_norms(base.tokenizer, base.text_encoder, prompts)  # [P, in]
    return neurons.select_masks(_cpu_weights(base), norms, cfg.select_ratio, cfg.prompt_chunk)


def base_masks(base, captions: list[str], cfg: SelectionConfig, norms: torch.Tensor | None = None) -> neurons.Masks:
    """Base neurons of a concept: AND over its images' captions (``norms`` [N, in]: their feature norms, when the
    caller encoded them itself, e.g. with a placeholder embedding spliced in)."""
    if norms is None:
        norms = token_norms(base.tokenizer, base.text_encoder, captions)  # [N, in]
    return neurons.select_masks(_cpu_weights(base), norms, cfg.select_ratio, cfg.prompt_chunk)


@dataclass
class Selection:
    """The three mask sets of one concept, all name -> bool [out, in]."""

    base: neurons.Masks
    general: neurons.Masks
    concept: neurons.Masks

    def summary(self) -> dict[str, float]:
        return {
            "base_fraction": neurons.mask_fraction(self.base),
            "general_fraction": neurons.mask_fraction(self.general),
            "concept_fraction": neurons.mask_fraction(self.concept),
            "concept_count": float(sum(int(m.sum()) for m in self.concept.values())),
        }


def select_concept(
    base, captions: list[str], general: neurons.Masks, cfg: SelectionConfig, *,
    norms: torch.Tensor | None = None, held: neurons.Masks | None = None,
) -> Selection:
    """concept = base AND NOT general, capped to ``cfg.budget`` by mean caption score when set; with
    ``cfg.exclusive``, moved off the entries ``held`` by the tenant's earlier concepts (:func:`neurons.exclusive_refill`).

    ``norms`` [N, in]: the captions' feature norms when the caller encoded them (token-informed selection); else the
    base's text encoder encodes ``captions``."""
    if not captions:
        raise InputError("no captions: give one caption per image, or a class word for the template")
    if norms is None:
        norms = token_norms(base.tokenizer, base.text_encoder, captions)  # [N, in]
    b = base_masks(base, captions, cfg, norms)
    c = neurons.concept_masks(b, general)
    if cfg.budget is not None or (cfg.exclusive and held):
        scores = neurons.mean_scores(_cpu_weights(base), norms)
        if cfg.budget is not None:
            c = neurons.cap_to_budget(c, scores, cfg.budget)
        if cfg.exclusive and held:
            c = neurons.exclusive_refill(c, general, held, scores)
    return Selection(base=b, general=general, concept=c)


def _cpu_weights(base) -> dict[str, torch.Tensor]:
    return {n: w.detach().float().cpu() for n, w in base.target_weights().items()}
