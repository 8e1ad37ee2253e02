"""One parsed type for learning-input locations, and the store's layout helpers."""

from __future__ import annotations

import os

import pytest

from cns_ray.errors import InputError
from cns_ray.jobs.inputs import ImagesSpec
from cns_ray.store.layout import checkpoint_location


@pytest.mark.parametrize(
    "given, kind, value, submitted",
    [
        ("store:uploads/acme/ab12", "store", "uploads/acme/ab12", "store:uploads/acme/ab12"),
        ("s3://b/p/rex", "s3", "s3://b/p/rex", "s3://b/p/rex"),
        ("file:///data/rex", "local", "/data/rex", "/data/rex"),
        ("rex", "local", "rex", os.path.abspath("rex")),
    ],
)
def test_images_spec_parses_once(given, kind, value, submitted):
    spec = ImagesSpec.parse(given)
    assert (spec.kind, spec.value, spec.for_submission()) == (kind, value, submitted)


@pytest.mark.parametrize("bad, match", [("store:../x", "inside the store"), ("store:tenants/acme", "uploads/ or store:inputs/"),
                                        ("http://x/y", "unsupported scheme"), ("", "empty")])
def test_images_spec_refuses(bad, match):
    with pytest.raises(InputError, match=match):
        ImagesSpec.parse(bad)


def test_checkpoints_under_the_store(tmp_path):
    path, fs = checkpoint_location(str(tmp_path / "s"), "acme")
    assert path == str(tmp_path / "s" / "checkpoints" / "acme") and fs is None
    with pytest.raises(Exception, match="tenant name"):
        checkpoint_location(str(tmp_path / "s"), "../x")
