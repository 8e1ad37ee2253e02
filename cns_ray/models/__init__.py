"""Base models: embedded ``tiny`` default, diffusers folders (local or S3), base_id."""

from cns_ray.models.base import TINY, TINY_WORLD, BaseModel, compute_base_id, load_base_model, save_base_model

__all__ = ["TINY", "TINY_WORLD", "BaseModel", "compute_base_id", "load_base_model", "save_base_model"]
