"""URIs -> pyarrow filesystems and boto3 clients. Local folders and ``s3://bucket/prefix``.

S3 settings come from the usual AWS environment: credentials from the default chain, region from
``AWS_REGION``/``AWS_DEFAULT_REGION`` (default us-east-1), a custom endpoint (MinIO, moto, ...) from
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs


@dataclass(frozen=True)
class Location:
    """A parsed URI: its filesystem and the path inside it (no trailing slash)."""

    uri: str
    fs: pafs.FileSystem
    path: str
    is_s3: bool
    bucket: str = ""
    prefix: str = ""

    def join(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *[p.strip("/") for p in parts if p]])


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def s3_filesystem() -> pafs.S3FileSystem:
    kwargs: dict = {"region": s3_region()}
    ep = s3_endpoint()
    if ep:
        u = urlparse(ep if "://" in ep else "https://" + ep)
        kwargs["endpoint_override"] = u.netloc
        kwargs["scheme"] = u.scheme or "https"
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        kwargs["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = os.environ["AWS_SECRET_ACCESS_KEY"]
        if os.environ.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    return pafs.S3FileSystem(**kwargs)


def s3_client():
    """A boto3 S3 client for the same endpoint/region (used where S3 semantics matter: conditional puts)."""
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint(), region_name=s3_region())


def resolve(uri: str) -> Location:
    """Parse a local path or ``s3://bucket/prefix`` into a :class:`Location`."""
    if uri.startswith("s3://"):
        u = urlparse(uri)
        if not u.netloc:
            raise ValueError(f"S3 URI {uri!r} has no bucket: use s3://bucket/prefix")
        prefix = u.path.strip("/")
        path = f"{u.netloc}/{prefix}" if prefix else u.netloc
        return Location(uri, s3_filesystem(), path, True, u.netloc, prefix)
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"unsupported URI scheme in {uri!r}: use a local folder or s3://bucket/prefix")
    local = os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))
    return Location(uri, pafs.LocalFileSystem(), local, False)
