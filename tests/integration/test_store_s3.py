"""The concept store on S3: moto's server over HTTP on 127.0.0.1 (conditional puts return real 412s).

Runs the shared store behaviours (tests/store_cases.py) against ``s3://bucket/prefix``, plus S3-only checks.
"""

from __future__ import annotations

import boto3
import pytest

from store_cases import *  # noqa: F401,F403  (the shared behaviour tests, run here against S3)
from store_data import make_state

from cns_ray.config import StoreConfig
from cns_ray.errors import StoreError
from cns_ray.fs import s3_endpoint
from cns_ray.store import ConceptStore


@pytest.fixture()
def store_uri(s3_env):
    return f"s3://{s3_env}/prefix"


def test_layout_and_conditional_manifest_on_s3(store_uri, s3_env):
    store = ConceptStore(StoreConfig(uri=store_uri))
    store.commit("acme", make_state("acme"), parent=None)
    client = boto3.client("s3", endpoint_url=s3_endpoint(), region_name="us-east-1")
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_env)["Contents"])
    assert keys == [
        "prefix/tenants/acme/manifest.json",
        "prefix/tenants/acme/versions/1/concepts.parquet",
        "prefix/tenants/acme/versions/1/delta.parquet",
        "prefix/tenants/acme/versions/1/tokens.parquet",
    ]
    # Someone rewrites the manifest behind our back: a commit based on the old ETag must lose.
    m, etag = store._manifest("acme")
    client.put_object(Bucket=s3_env, Key="prefix/tenants/acme/manifest.json", Body=m.to_bytes() + b" ")
    from cns_ray.store.backend import PreconditionFailed

    with pytest.raises(PreconditionFailed):
        store._backend.replace("tenants/acme/manifest.json", m.to_bytes(), etag)


def test_missing_bucket_is_a_clear_error(s3_env):
    store = ConceptStore(StoreConfig(uri="s3://no-such-bucket-cns/x"))
    with pytest.raises(StoreError, match="bucket 'no-such-bucket-cns' does not exist"):
        store.commit("acme", make_state("acme"), parent=None)
