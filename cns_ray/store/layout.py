"""Where everything lives under a store root: the only place that builds keys outside the tenants' versions.

    bases/{base_id}/general/{key}.parquet (+ .json)   general-mask cache
    tenants/{tenant}/...                              heads, version records and files (store.py, commit.py)
    uploads/{tenant}/{upload_id}/{i:03d}.png          images sent to the HTTP learn route
    checkpoints/{tenant}/{run}/...                    Ray Train checkpoints of learning runs
    inputs/...                                        folders named ``store:inputs/...`` as learning inputs
    library/{base_id}/...                             the zero-shot synthesizer's concept library (cns_ray/synth/library.py)

A folder under the store is named ``store:REL`` (``STORE_REF``) in learning requests, so that what a run records
stays valid when the store moves.
"""

from __future__ import annotations

import uuid

import pyarrow.fs as pafs

from cns_ray.errors import InvalidNameError, StoreError
from cns_ray.fs import Location, resolve
from cns_ray.store.names import validate_name

TOP_LEVEL = ("bases", "tenants", "uploads", "checkpoints", "inputs", "library")
STORE_REF = "store:"


def root_location(uri: str) -> Location:
    """The parsed store root (local folder or s3://bucket/prefix); StoreError naming the URI if it is not one."""
    try:
        return resolve(uri)
    except ValueError as e:
        raise StoreError(str(e)) from e


def checkpoint_location(uri: str, tenant: str) -> tuple[str, pafs.FileSystem | None]:
    """(storage_path, storage_filesystem or None for local) of a tenant's Ray Train checkpoints under the store."""
    loc = root_location(uri)
    path = loc.join("checkpoints", validate_name(tenant, "tenant"))
    return (path, loc.fs) if loc.is_s3 else (path, None)


def new_upload_key(tenant: str) -> str:
    return f"uploads/{validate_name(tenant, 'tenant')}/{uuid.uuid4().hex}"


def store_ref(key: str) -> str:
    return STORE_REF + key


def parse_store_ref(spec: str) -> str:
    """``store:REL`` -> REL (a folder key under the store root), refusing empty, '.' and '..' segments."""
    rel = spec[len(STORE_REF):].strip("/")
    if not rel or any(s in ("", ".", "..") for s in rel.split("/")):
        raise InvalidNameError(f"images={spec!r}: give a folder inside the store, e.g. store:inputs/rex")
    if rel.split("/")[0] not in ("uploads", "inputs"):
        raise InvalidNameError(f"images={spec!r}: learning inputs live under store:uploads/ or store:inputs/ "
                               f"(the store's layout: {', '.join(TOP_LEVEL)})")
    return rel


def layout_problems(backend) -> list[str]:
    """Top-level entries that are not part of the layout, and uploads/checkpoints folders that name no valid tenant."""
    p = []
    for d in backend.list_dirs(""):
        if d not in TOP_LEVEL:
            p.append(f"{backend.uri(d)}: not part of the store layout ({', '.join(TOP_LEVEL)}); move it out of the store")
    for top in ("uploads", "checkpoints"):
        for t in backend.list_dirs(top):
            try:
                validate_name(t, "tenant")
            except InvalidNameError as e:
                p.append(f"{backend.uri(f'{top}/{t}')}: {e}")
    return p
