"""Loading a base model from an s3:// diffusers folder (moto's S3 server over HTTP on 127.0.0.1): the local cache
copies only what a load reads, survives two processes filling it at once, and fetches an updated folder again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cns_ray.errors import ModelLoadError
from cns_ray.models import load_base_model, save_base_model
from cns_ray.models.s3_cache import FILE_LIST


def _client():
    import boto3

    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")


def _upload(folder, bucket: str, prefix: str) -> int:
    client = _client()
    n = 0
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
            n += 1
    return n


def _entries(cache):
    return sorted(p for p in (cache / "models").iterdir() if p.is_dir())


@pytest.fixture()
def s3_model(tiny_base, s3_env, tmp_path):
    """The tiny model saved to S3 with the extra files a real download carries (a .ckpt, .bin copies, variants)."""
    folder = save_base_model(tiny_base, tmp_path / "saved")
    (folder / "v1-5-pruned.ckpt").write_bytes(b"x" * 1000)
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"x" * 1000)
    (folder / "unet" / "diffusion_pytorch_model.non_ema.safetensors").write_bytes(b"x" * 1000)
    (folder / "unet" / "diffusion_flax_model.msgpack").write_bytes(b"x" * 1000)
    (folder / "cns_defaults.json").write_text(json.dumps({"steps": 40, "guidance_scale": 6.0}))
    _upload(folder, s3_env, "models/tiny-sd")
    return f"s3://{s3_env}/models/tiny-sd", folder


def test_load_copies_only_what_a_load_reads(tiny_base, s3_model, tmp_path):
    uri, _ = s3_model
    cache = tmp_path / "cache"
    loaded = load_base_model(uri, cache_dir=cache)
    assert loaded.base_id == tiny_base.base_id
    assert loaded.target_shapes() == tiny_base.target_shapes()
    [entry] = _entries(cache)
    copied = sorted(p.relative_to(entry).as_posix() for p in entry.rglob("*") if p.is_file())
    assert not any(p.endswith((".ckpt", ".bin", ".msgpack")) or "non_ema" in p for p in copied), copied
    assert "unet/diffusion_pytorch_model.safetensors" in copied and FILE_LIST in copied
    assert loaded.folder == entry
    again = load_base_model(uri, cache_dir=cache)  # reused
    assert again.base_id == tiny_base.base_id and _entries(cache) == [entry]


def test_base_defaults_read_from_s3(s3_model):
    from cns_ray.models.defaults import base_defaults

    uri, _ = s3_model
    d = base_defaults(uri)
    assert (d.steps, d.guidance_scale, d.token_lr) == (40, 6.0, 5e-4)


FILL = """
import sys
from pathlib import Path
from cns_ray.models.s3_cache import sync_folder
r = sync_folder(sys.argv[1], Path(sys.argv[2]))
print("FETCHED" if r.fetched else "REUSED", r.path)
"""


def test_two_processes_filling_the_cache_at_once(tiny_base, s3_model, tmp_path):
    uri, _ = s3_model
    cache = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-c", FILL, uri, str(cache)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=dict(os.environ)) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    results = sorted(o[0].split()[0] for o in outs)
    assert results == ["FETCHED", "REUSED"], outs  # one filled it, the other waited for the lock and reused it
    assert len({o[0].split()[1] for o in outs}) == 1
    [entry] = _entries(cache)
    assert not [p for p in (cache / "models").iterdir() if ".tmp-" in p.name]  # no temporary folder left behind
    assert load_base_model(uri, cache_dir=cache).base_id == tiny_base.base_id


def test_an_updated_folder_is_fetched_again(tiny_base, s3_model, tmp_path):
    import torch

    uri, folder = s3_model
    cache = tmp_path / "cache"
    first = load_base_model(uri, cache_dir=cache)
    changed = load_base_model(str(folder))  # new weights under the same URI
    with torch.no_grad():
        next(iter(changed.target_weights().values()))[0, 0] += 1.0
    save_base_model(changed, tmp_path / "changed")
    bucket, prefix = uri[5:].split("/", 1)
    _client().upload_file(str(tmp_path / "changed" / "unet" / "diffusion_pytorch_model.safetensors"), bucket,
                          f"{prefix}/unet/diffusion_pytorch_model.safetensors")
    from cns_ray.models import compute_base_id

    second = load_base_model(uri, cache_dir=cache)
    assert second.base_id == compute_base_id(changed.unet) != first.base_id
    assert len(_entries(cache)) == 2


def test_a_damaged_cache_entry_is_fetched_again(tiny_base, s3_model, tmp_path):
    uri, _ = s3_model
    cache = tmp_path / "cache"
    load_base_model(uri, cache_dir=cache)
    [entry] = _entries(cache)
    (entry / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"truncated")
    assert load_base_model(uri, cache_dir=cache).base_id == tiny_base.base_id


def test_fp16_only_folder_on_s3(tiny_base, s3_env, tmp_path):
    folder = tmp_path / "fp16"
    tiny_base.pipeline.save_pretrained(str(folder), variant="fp16")
    _upload(folder, s3_env, "models/fp16")
    loaded = load_base_model(f"s3://{s3_env}/models/fp16", cache_dir=tmp_path / "cache")
    assert loaded.base_id == tiny_base.base_id


def test_empty_s3_prefix_refused(s3_env, tmp_path):
    with pytest.raises(ModelLoadError, match="no files under"):
        load_base_model(f"s3://{s3_env}/nothing-here", cache_dir=tmp_path)
