"""Sharded calibration scoring on Ray, cached in the concept store.

General neurons of a base model (``AND`` of the per-prompt top-ratio masks over the calibration prompts, see
:mod:`cns_ray.neurons`) are computed by :class:`ScorerActor` s: each loads the base model from its spec string,
keeps only the tokenizer, the text encoder and the target weights, scores a contiguous shard of the prompts,
AND-reduces it locally and returns bit-packed masks. The driver ANDs the shards. Prompts are encoded one at a time
(:func:`cns_ray.models.text.encode_prompts`), so the result is bit-identical to the single-process
:func:`cns_ray.select.general_masks_local`.

Results are cached in the store under ``(base_id, calib_key(prompts, select_ratio))``: a second call for the same
key does no scoring.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch

from cns_ray import neurons
from cns_ray.config import SelectionConfig
from cns_ray.errors import BaseMismatchError, ConfigError
from cns_ray.select import Selection, calib_key, general_masks_local, load_prompts, select_concept

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""``progress(shards_done, shards_total)``, called once per finished shard."""

CPUS_PER_SCORER = 0.5
"""CPUs a scorer actor asks for when the cluster has no GPU (fractional: small machines)."""


@dataclass
class GeneralMasksResult:
    """General masks plus where they came from."""

    masks: neurons.Masks
    key: str
    """The cache key (:func:`cns_ray.select.calib_key`)."""
    base_id: str
    from_cache: bool
    num_prompts: int
    shards: int
    """Shards scored (0 when served from the cache)."""
    seconds: float


class Scorer:
    """Holds what scoring needs from a base model: tokenizer, text encoder, target weights ``[out, in]``.

    The plain class is used in-process; :func:`scorer_actor_class` wraps it as a Ray actor.
    """

    def __init__(self, base_spec: str, device: str | None = None):
        from cns_ray.models import load_base_model

        if device is None:
            from cns_ray.device import process_device

            device = str(process_device("this scorer actor"))
        base = load_base_model(base_spec, device=device)
        self.base_id = base.base_id
        self.device = device
        self.tokenizer = base.tokenizer
        self.text_encoder = base.text_encoder
        self.weights = {n: w.detach().float() for n, w in base.target_weights().items()}  # name -> [out, in]
        self.calls = 0
        # The UNet's other weights and the VAE are not needed: let them go (an SD-1.5 UNet is ~3.4 GB).
        del base
        if device.startswith("cuda"):
            torch.cuda.empty_cache()

    def info(self) -> dict:
        return {"base_id": self.base_id, "device": self.device, "calls": self.calls}

    def score(self, prompts: list[str], select_ratio: float, prompt_chunk: int) -> dict:
        """AND of the top-``select_ratio`` masks of ``prompts``, bit-packed (:func:`cns_ray.neurons.pack_masks`)."""
        from cns_ray.models.text import token_norms

        self.calls += 1
        t0 = time.perf_counter()
        norms = token_norms(self.tokenizer, self.text_encoder, prompts)  # [P, in]
        masks = neurons.select_masks(self.weights, norms, select_ratio, prompt_chunk)
        log.debug("scored %d prompts in %.2fs", len(prompts), time.perf_counter() - t0)
        return neurons.pack_masks(masks)


def scorer_actor_class(num_gpus: float = 0.0, num_cpus: float = CPUS_PER_SCORER):
    """``ScorerActor``: :class:`Scorer` as a Ray actor, one per GPU (``num_gpus=1``) or on fractional CPUs."""
    import ray

    if num_gpus > 0:
        return ray.remote(num_gpus=num_gpus, num_cpus=1)(Scorer)
    return ray.remote(num_cpus=num_cpus)(Scorer)


def shard_prompts(prompts: list[str], num_shards: int) -> list[list[str]]:
    """Contiguous, near-equal shards; never an empty one (fewer shards than asked when prompts are few)."""
    n = max(1, min(num_shards, len(prompts)))
    size, rest = divmod(len(prompts), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < rest else 0)
        out.append(prompts[start:end])
        start = end
    return out


def score_sharded(
    base_spec: str,
    base_id: str,
    prompts: list[str],
    cfg: SelectionConfig,
    num_actors: int,
    progress: Progress | None = None,
) -> tuple[neurons.Masks, int]:
    """Score ``prompts`` with ``num_actors`` scorer actors on Ray (connected, or started by
    :func:`cns_ray.jobs.ray_env.init_ray`); returns (masks, shards)."""
    import ray

    from cns_ray.jobs.ray_env import gpus_available, init_ray

    init_ray()  # no-op when connected; else RAY_ADDRESS (ray job submit) or a private local Ray on 127.0.0.1
    from cns_ray.models import EMBEDDED_MODELS

    if base_spec not in EMBEDDED_MODELS and not base_spec.startswith("s3://") and os.path.exists(base_spec):
        base_spec = os.path.abspath(base_spec)  # actors may run in another working directory
    gpus = gpus_available()
    if gpus >= 1 and num_actors > int(gpus):
        # One scorer per GPU: more actors than GPUs would wait for a GPU that none of them gives back.
        log.warning("%d scorer actors asked, the cluster has %d GPU(s): scoring in %d shards", num_actors, int(gpus), int(gpus))
        num_actors = int(gpus)
    shards = shard_prompts(prompts, num_actors)
    actor_cls = scorer_actor_class(num_gpus=1 if gpus >= 1 else 0)
    actors = [actor_cls.remote(base_spec) for _ in shards]
    log.info("scoring %d prompts in %d shards (%s)", len(prompts), len(shards), "GPU" if gpus >= 1 else "CPU")
    try:
        infos = ray.get([a.info.remote() for a in actors])
        wrong = sorted({i["base_id"] for i in infos if i["base_id"] != base_id})
        if wrong:
            raise BaseMismatchError(
                [f"scorer actors loaded {base_spec!r} as base_id {wrong}, the driver has {base_id!r}: the model "
                 "changed between loads, or the workers see another folder; give a path every node sees"]
            )
        pending = [a.score.remote(s, cfg.select_ratio, cfg.prompt_chunk) for a, s in zip(actors, shards)]
        parts: list[neurons.Masks] = []
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            parts.append(neurons.unpack_masks(ray.get(done[0])))
            if progress is not None:
                progress(len(parts), len(shards))
        return neurons.and_reduce(parts), len(shards)
    finally:
        for a in actors:
            ray.kill(a)


def general_masks_info(
    base,
    store=None,
    cfg: SelectionConfig = SelectionConfig(),
    prompts: list[str] | None = None,
    num_actors: int = 0,
    progress: Progress | None = None,
) -> GeneralMasksResult:
    """General neurons of ``base`` (a loaded :class:`cns_ray.models.BaseModel`, or its spec string), cached.

    store: a :class:`cns_ray.store.ConceptStore` (or None: no cache). prompts: None = the base model's own set,
    else the built-in one (:func:`cns_ray.select.load_prompts`).
    num_actors: 0 = score in this process; N >= 1 = N scorer actors on Ray (started only on a cache miss).
    """
    from cns_ray.models import BaseModel, load_base_model

    if num_actors < 0:
        raise ConfigError(f"num_actors={num_actors} must be >= 0 (0 = score in this process)")
    t0 = time.perf_counter()
    if not isinstance(base, BaseModel):
        base = load_base_model(str(base))
    prompts = list(prompts) if prompts is not None else load_prompts(base=base)
    key = calib_key(base.base_id, prompts, cfg)
    if store is not None:
        cached = store.get_general_masks(base.base_id, key)
        if cached is not None:
            log.info("general masks %s/%s from the store cache", base.base_id, key)
            return GeneralMasksResult(cached, key, base.base_id, True, len(prompts), 0, time.perf_counter() - t0)
    if num_actors == 0:
        masks, shards = general_masks_local(base, prompts, cfg), 1
        if progress is not None:
            progress(1, 1)
    else:
        masks, shards = score_sharded(base.source, base.base_id, prompts, cfg, num_actors, progress)
    seconds = time.perf_counter() - t0
    if store is not None:
        meta = {
            "prompts": prompts,
            "select_ratio": cfg.select_ratio,
            "num_prompts": len(prompts),
            "fraction": neurons.mask_fraction(masks),
            "shards": shards,
            "seconds": round(seconds, 3),
            "base_source": base.source,
        }
        store.put_general_masks(base.base_id, key, masks, meta)
    return GeneralMasksResult(masks, key, base.base_id, False, len(prompts), shards, seconds)


def general_masks(
    base,
    store=None,
    cfg: SelectionConfig = SelectionConfig(),
    prompts: list[str] | None = None,
    num_actors: int = 0,
    progress: Progress | None = None,
) -> neurons.Masks:
    """General-neuron masks (name -> bool ``[out, in]``); see :func:`general_masks_info`."""
    return general_masks_info(base, store, cfg, prompts, num_actors, progress).masks


def select_for_concept(
    base,
    store,
    captions: list[str],
    cfg: SelectionConfig = SelectionConfig(),
    num_actors: int = 0,
    prompts: list[str] | None = None,
) -> Selection:
    """Concept neurons (base AND NOT general, budget-capped) for ``captions``; general masks from the cache."""
    from cns_ray.models import BaseModel, load_base_model

    if not isinstance(base, BaseModel):
        base = load_base_model(str(base))
    general = general_masks(base, store, cfg, prompts, num_actors)
    return select_concept(base, captions, general, cfg)
