"""Inputs of a learning run: images from a local folder, S3 (moto server over HTTP) or the store; checkpoint paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from cns_ray.errors import InputError

EXAMPLES = Path(__file__).resolve().parents[2] / "cns_ray" / "data" / "examples"


def test_images_from_s3_and_store_and_local(s3_env, tmp_path):
    import boto3
    import pyarrow.fs as pafs

    from cns_ray.fs import s3_endpoint
    from cns_ray.jobs.inputs import materialize_images
    from cns_ray.jobs.train import checkpoint_location

    s3 = boto3.client("s3", endpoint_url=s3_endpoint(), region_name="us-east-1")
    names = sorted(p.name for p in (EXAMPLES / "toy").iterdir())
    for n in names:
        s3.upload_file(str(EXAMPLES / "toy" / n), s3_env, f"store/inputs/toy/{n}")

    for spec, store in ((f"s3://{s3_env}/store/inputs/toy", None), ("store:inputs/toy", f"s3://{s3_env}/store")):
        with materialize_images(spec, store) as imgs:
            assert imgs.temporary and sorted(p.name for p in Path(imgs.path).iterdir()) == names
            assert (Path(imgs.path) / names[0]).read_bytes() == (EXAMPLES / "toy" / names[0]).read_bytes()
            copied = imgs.path
        assert not Path(copied).exists()

    local = materialize_images(str(EXAMPLES / "toy"))
    assert local.path == str(EXAMPLES / "toy") and not local.temporary
    local.cleanup()
    assert (EXAMPLES / "toy").is_dir()  # a local folder is never removed

    path, fs = checkpoint_location(f"s3://{s3_env}/store", "acme")
    assert path == f"{s3_env}/store/checkpoints/acme" and isinstance(fs, pafs.S3FileSystem)
    path, fs = checkpoint_location(str(tmp_path / "st"), "acme")
    assert path == str(tmp_path / "st" / "checkpoints" / "acme") and fs is None


@pytest.mark.parametrize(
    "spec, store, match",
    [
        ("/no/such/folder", None, r"'/no/such/folder' is not a folder"),
        ("store:../etc", "/tmp", r"folder inside the store"),
        ("store:inputs/x", None, r"no store was given"),
        ("", None, r"images is empty"),
    ],
)
def test_bad_image_locations_are_refused(spec, store, match):
    from cns_ray.jobs.inputs import materialize_images

    with pytest.raises(InputError, match=match):
        materialize_images(spec, store)


def test_missing_s3_folder_is_refused(s3_env):
    from cns_ray.jobs.inputs import materialize_images

    with pytest.raises(InputError, match="is not a folder"):
        materialize_images(f"s3://{s3_env}/nothing/here")
