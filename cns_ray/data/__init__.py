"""Bundled data: calibration prompts and example concepts."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def data_path(*parts: str) -> Path:
    return Path(str(resources.files("cns_ray.data").joinpath(*parts)))
