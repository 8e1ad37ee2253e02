"""Loading a base model from an s3:// diffusers folder (moto's S3 server over HTTP on 127.0.0.1)."""

from __future__ import annotations

import os

import pytest

from cns_ray.errors import ModelLoadError
from cns_ray.models import load_base_model, save_base_model


def _upload(folder, bucket: str, prefix: str) -> int:
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
    n = 0
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
            n += 1
    return n


def test_load_from_s3_prefix(tiny_base, s3_env, tmp_path):
    folder = save_base_model(tiny_base, tmp_path / "saved")
    assert _upload(folder, s3_env, "models/tiny-sd") > 5
    cache = tmp_path / "cache"
    loaded = load_base_model(f"s3://{s3_env}/models/tiny-sd", cache_dir=cache)
    assert loaded.base_id == tiny_base.base_id
    assert loaded.target_shapes() == tiny_base.target_shapes()
    synced = [p for p in cache.rglob("model_index.json")]
    assert len(synced) == 1  # synced once into the cache
    again = load_base_model(f"s3://{s3_env}/models/tiny-sd", cache_dir=cache)
    assert again.base_id == tiny_base.base_id


def test_empty_s3_prefix_refused(s3_env, tmp_path):
    with pytest.raises(ModelLoadError, match="no files under"):
        load_base_model(f"s3://{s3_env}/nothing-here", cache_dir=tmp_path)
