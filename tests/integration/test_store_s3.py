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


def test_layout_and_conditional_head_on_s3(store_uri, s3_env):
    store = ConceptStore(StoreConfig(uri=store_uri))
    store.commit("acme", make_state("acme"), parent=None)
    client = boto3.client("s3", endpoint_url=s3_endpoint(), region_name="us-east-1")
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_env)["Contents"])
    assert keys == [
        "prefix/tenants/acme/head.json",
        *[f"prefix/tenants/acme/versions/1/{f}" for f in
          ("commit.json", "concepts.parquet", "delta.parquet", "tokens.parquet", "version.json")],
    ]
    # Someone rewrites the head behind our back: a move based on the old ETag must lose.
    head = client.get_object(Bucket=s3_env, Key="prefix/tenants/acme/head.json")
    body, etag = head["Body"].read(), head["ETag"]
    client.put_object(Bucket=s3_env, Key="prefix/tenants/acme/head.json", Body=body + b" ")
    from cns_ray.store.backend import PreconditionFailed

    with pytest.raises(PreconditionFailed):
        store.backend.replace("tenants/acme/head.json", body, etag)


def test_missing_bucket_is_a_clear_error(s3_env):
    store = ConceptStore(StoreConfig(uri="s3://no-such-bucket-cns/x"))
    with pytest.raises(StoreError, match="bucket 'no-such-bucket-cns' does not exist"):
        store.commit("acme", make_state("acme"), parent=None)
