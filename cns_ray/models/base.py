"""Base models: the embedded ``tiny`` default or a diffusers-format folder (local, or ``s3://`` synced to a cache).

``base_id`` fingerprints the UNet config and the target weights, so a state learned on one base is refused on
another. Weights are hashed after a cast to float16, so the same checkpoint loaded in fp16 or fp32 gets one id.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from cns_ray.errors import ModelLoadError
from cns_ray.targets import Target, find_target_modules, target_specs

log = logging.getLogger(__name__)

TINY = "tiny"
TINY_WORLD = "tiny-world"
"""The shipped base model trained on the procedural toy world (pipelines/train_base.py; docs/toy-world.md)."""


def compute_base_id(unet) -> str:
    """sha256 (first 16 hex) of the UNet config (public keys) and its target weights in float16."""
    h = hashlib.sha256()
    cfg = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, mod in find_target_modules(unet).items():
        h.update(name.encode())
        h.update(mod.weight.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class BaseModel:
    """A loaded base pipeline plus what CNS needs to know about it."""

    pipeline: object  # diffusers StableDiffusionPipeline
    base_id: str
    source: str

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


def _sync_s3_folder(uri: str, cache_dir: Path) -> Path:
    """Copy an ``s3://`` diffusers folder into ``cache_dir`` once (keyed by URI); returns the local folder."""
    import pyarrow.fs as pafs

    from cns_ray.fs import resolve

    loc = resolve(uri)
    dest = cache_dir / "models" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    marker = dest / ".complete"
    if marker.exists():
        return dest
    info = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True, allow_not_found=True))
    files = [i for i in info if i.type == pafs.FileType.File]
    if not files:
        raise ModelLoadError(f"no files under {uri}: point --base-model at a diffusers folder (with model_index.json)")
    tmp = dest.with_name(dest.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    for f in files:
        rel = f.path[len(loc.path) :].lstrip("/")
        out = tmp / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        with loc.fs.open_input_stream(f.path) as src, open(out, "wb") as dst:
            while chunk := src.read(1 << 24):
                dst.write(chunk)
    if dest.exists():
        import shutil

        shutil.rmtree(dest)
    tmp.rename(dest)
    marker.touch()
    return dest


def load_base_model(spec: str = TINY, *, dtype: torch.dtype = torch.float32, device: str = "cpu", cache_dir: Path | None = None) -> BaseModel:
    """Load ``tiny`` (random weights, built offline), ``tiny-world`` (shipped, trained on the toy world), a local
    diffusers folder, or an ``s3://`` diffusers folder."""
    if spec == TINY:
        from cns_ray.models.tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline()
    else:
        import cns_ray.models.patch_vae  # noqa: F401  (diffusers only loads component classes already imported)

        path = Path(spec)
        if spec == TINY_WORLD:
            from cns_ray.data import data_path

            path = data_path("base", "tiny-world")
        if spec.startswith("s3://"):
            path = _sync_s3_folder(spec, cache_dir or default_cache_dir())
        if not (path / "model_index.json").exists():
            raise ModelLoadError(
                f"base model {spec!r} is not a diffusers folder (no model_index.json at {path}): give 'tiny', a folder "
                "saved with save_pretrained (e.g. Stable Diffusion 1.5), or s3://bucket/prefix of one"
            )
        from diffusers import StableDiffusionPipeline

        try:
            pipe = StableDiffusionPipeline.from_pretrained(
                str(path), safety_checker=None, requires_safety_checker=False, dtype=dtype, local_files_only=True
            )
        except Exception as e:  # diffusers raises many types here
            raise ModelLoadError(f"could not load diffusers folder {path}: {e}") from e
        pipe.set_progress_bar_config(disable=True)
    if pipe.unet.dtype != dtype:
        pipe = pipe.to(dtype=dtype)
    pipe = pipe.to(device)
    for m in (pipe.unet, pipe.text_encoder, pipe.vae):
        m.eval().requires_grad_(False)
    base_id = compute_base_id(pipe.unet)
    log.info("loaded base model %s (base_id %s)", spec, base_id)
    return BaseModel(pipeline=pipe, base_id=base_id, source=spec)


def save_base_model(model: BaseModel, folder: str | Path) -> Path:
    """Save as a diffusers folder (loadable with :func:`load_base_model`)."""
    folder = Path(folder)
    model.pipeline.save_pretrained(str(folder), safe_serialization=True)
    return folder
