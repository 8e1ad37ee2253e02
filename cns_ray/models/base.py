"""Base models: the embedded ``tiny`` default (shipped, trained on the toy world), the ``tiny-random`` test model,
or a diffusers-format folder (local, or ``s3://`` synced to a cache).

``base_id`` (:mod:`cns_ray.models.base_id`) fingerprints the target weights and the shape-determining UNet config, so
a state learned on one base is refused on another.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from cns_ray.errors import ModelLoadError
from cns_ray.models.base_id import compute_base_id
from cns_ray.targets import Target, find_target_modules, target_specs

log = logging.getLogger(__name__)

TINY = "tiny"
"""The embedded default: the shipped base model trained on the procedural toy world (pipelines/train_base.py;
docs/toy-world.md): 32 px images, a patch autoencoder (8x8x48 latents), cross_attention_dim 128. Its images are
recognisable toy-world scenes. Loaded from the folder inside the installed package (:data:`TINY_FOLDER`)."""
TINY_WORLD = "tiny-world"
"""Alias of :data:`TINY`: the same shipped folder, the same ``base_id``."""
TINY_RANDOM = "tiny-random"
"""Random weights built offline from configs (cns_ray/models/tiny.py; 64 px, cross_attention_dim 32): for fast
tests of the system's mechanics; its images are noise."""
TINY_V2 = "tiny-v2"
"""Alias of :data:`TINY` (the name it had while it was being trained on toy world v2, before it became the
default): the same shipped folder, the same ``base_id``."""
EMBEDDED_MODELS = (TINY, TINY_WORLD, TINY_RANDOM, TINY_V2)
"""Specs that name a built-in model rather than a folder: every process (Ray actors, Train workers) loads them
itself, from the installed package."""
TINY_FOLDER = ("base", "tiny-world")
"""Where :data:`TINY` lives: ``cns_ray.data.data_path(*TINY_FOLDER)``."""


@dataclass
class BaseModel:
    """A loaded base pipeline plus what CNS needs to know about it."""

    pipeline: object  # diffusers StableDiffusionPipeline
    base_id: str
    source: str
    folder: Path | None = None
    """The local diffusers folder it was loaded from (the package's for ``tiny``, the cache's for ``s3://``);
    None when built in memory (``tiny-random``)."""

    @property
    def unet(self):
        return self.pipeline.unet

    @property
    def text_encoder(self):
        return self.pipeline.text_encoder

    @property
    def tokenizer(self):
        return self.pipeline.tokenizer

    @property
    def vae(self):
        return self.pipeline.vae

    @property
    def scheduler(self):
        return self.pipeline.scheduler

    @property
    def resolution(self) -> int:
        return int(self.unet.config.sample_size) * int(self.pipeline.vae_scale_factor)

    def targets(self) -> dict[str, Target]:
        return target_specs(self.unet)

    def target_modules(self) -> dict:
        return find_target_modules(self.unet)

    def target_weights(self) -> dict[str, torch.Tensor]:
        """Live target weights, name -> [out, in] (not copies)."""
        return {n: m.weight for n, m in find_target_modules(self.unet).items()}

    def target_shapes(self) -> dict[str, tuple[int, int]]:
        return {n: t.shape for n, t in self.targets().items()}


def default_cache_dir() -> Path:
    return Path(os.environ.get("CNS_CACHE_DIR", Path.home() / ".cache" / "cns-ray"))


def _local_variant(path: Path, spec: str) -> str | None:
    """The weight variant a local diffusers folder needs (``fp16`` when it holds only ``*.fp16.*`` weights)."""
    from cns_ray.models.files import detect_variant

    return detect_variant([p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()], spec)


@contextmanager
def _quiet_diffusers(quiet: bool):
    """For the shipped model only: no loading bars, no torchvision notices, and no "Expected types for vae ...
    PatchAutoencoder" warning
    (its patch autoencoder has the AutoencoderKL interface but not the class)."""
    if not quiet:
        yield
        return
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    levels = dlog.get_verbosity(), tlog.get_verbosity()
    for lib in (dlog, tlog):
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, level in zip((dlog, tlog), levels):
            lib.set_verbosity(level)
            lib.enable_progress_bar()


def load_base_model(
    spec: str = TINY,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    cache_dir: Path | None = None,
    variant: str | None = None,
) -> BaseModel:
    """Load ``tiny`` (the default: shipped, trained on the toy world; ``tiny-world`` is an alias), ``tiny-random``
    (random weights built offline from configs: for fast tests of the system's mechanics; its images are noise), a
    local diffusers folder, or an ``s3://`` diffusers folder (copied once to ``cache_dir``: cns_ray/models/s3_cache.py).

    variant: the weight variant to load (``fp16``, ...); None = plain weights, or the one variant a folder holds
    when some of its components have only variant weights (e.g. a folder of ``*.fp16.safetensors``)."""
    folder: Path | None = None
    if spec == TINY_RANDOM:
        from cns_ray.models.tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline()
    else:
        import cns_ray.models.patch_vae  # noqa: F401  (diffusers only loads component classes already imported)

        path = Path(spec)
        if spec in (TINY, TINY_WORLD, TINY_V2):
            from cns_ray.data import data_path

            path = data_path(*TINY_FOLDER)
        elif spec.startswith("s3://"):
            from cns_ray.models.s3_cache import sync_folder

            synced = sync_folder(spec, cache_dir or default_cache_dir(), variant)
            path, variant = synced.path, synced.variant
        if not (path / "model_index.json").exists():
            if spec in (TINY, TINY_WORLD, TINY_V2):
                raise ModelLoadError(
                    f"the shipped base model {spec!r} is missing from the installed package (no model_index.json at "
                    f"{path}): reinstall cns-ray, or give 'tiny-random' (random weights, for tests) or a diffusers folder"
                )
            raise ModelLoadError(
                f"base model {spec!r} is not a diffusers folder (no model_index.json at {path}): give 'tiny' (the "
                "shipped default), 'tiny-random' (random weights, for tests), a folder saved with save_pretrained "
                "(e.g. Stable Diffusion 1.5), or s3://bucket/prefix of one"
            )
        if variant is None and not spec.startswith("s3://"):
            variant = _local_variant(path, spec)
        try:
            with _quiet_diffusers(spec in (TINY, TINY_WORLD)):
                from diffusers import StableDiffusionPipeline

                pipe = StableDiffusionPipeline.from_pretrained(
                    str(path), safety_checker=None, requires_safety_checker=False, dtype=dtype, local_files_only=True,
                    variant=variant,
                )
        except Exception as e:  # diffusers raises many types here
            raise ModelLoadError(f"could not load diffusers folder {path}: {e}") from e
        pipe.set_progress_bar_config(disable=True)
        folder = path
    if pipe.unet.dtype != dtype:
        pipe = pipe.to(dtype=dtype)
    pipe = pipe.to(device)
    for m in (pipe.unet, pipe.text_encoder, pipe.vae):
        m.eval().requires_grad_(False)
    base_id = compute_base_id(pipe.unet)
    log.info("loaded base model %s (base_id %s%s)", spec, base_id, f", variant {variant}" if variant else "")
    return BaseModel(pipeline=pipe, base_id=base_id, source=spec, folder=folder)


def save_base_model(model: BaseModel, folder: str | Path) -> Path:
    """Save as a diffusers folder (loadable with :func:`load_base_model`)."""
    folder = Path(folder)
    model.pipeline.save_pretrained(str(folder), safe_serialization=True)
    return folder
