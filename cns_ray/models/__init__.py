"""Base models: the embedded ``tiny`` default (shipped, trained; alias ``tiny-world``), ``tiny-random`` (random
weights, for tests), diffusers folders (local or S3), base_id."""

from cns_ray.models.base import (
    EMBEDDED_MODELS,
    TINY,
    TINY_RANDOM,
    TINY_WORLD,
    BaseModel,
    compute_base_id,
    load_base_model,
    save_base_model,
)

__all__ = [
    "EMBEDDED_MODELS",
    "TINY",
    "TINY_RANDOM",
    "TINY_WORLD",
    "BaseModel",
    "compute_base_id",
    "load_base_model",
    "save_base_model",
]
