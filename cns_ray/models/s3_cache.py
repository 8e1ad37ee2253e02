"""An ``s3://`` diffusers folder, copied to a local cache that several processes may fill at once.

- Only what a load reads is copied (:func:`cns_ray.models.files.needed_files`: no ``.ckpt``, no ``.bin`` next to
  ``.safetensors``, no unasked variants).
- The cache entry is keyed by the URI, the variant and every copied object's ETag: an updated folder gets a new entry
  (fetched again); an unchanged one is reused.
- Filling takes an exclusive ``flock`` on ``<entry>.lock``; a process that waited finds the entry done and reuses it.
  Each filler downloads into its own temporary folder (``<entry>.tmp-*``), checks every file's size against the
  listing (each object is read with ``If-Match`` its ETag, so a folder changed mid-copy fails instead of mixing
  versions), writes the file list, and renames the folder into place: an entry exists whole or not at all.
- A hit is checked too: every listed file present with its size; otherwise it is fetched again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cns_ray.errors import ModelLoadError
from cns_ray.models.files import detect_variant, needed_files

log = logging.getLogger(__name__)

FILE_LIST = ".cns-files.json"
"""Inside a cache entry: what was copied (relative path -> size, ETag), written last before the rename."""


@dataclass(frozen=True)
class RemoteFile:
    rel: str
    key: str
    size: int
    etag: str


@dataclass(frozen=True)
class CachedFolder:
    path: Path
    variant: str | None
    fetched: bool
    """True when this call copied it (False: reused)."""


def list_folder(uri: str) -> list[RemoteFile]:
    """Every object under ``s3://bucket/prefix/`` with its size and ETag."""
    from cns_ray.fs import resolve, s3_client

    loc = resolve(uri.rstrip("/"))
    prefix = f"{loc.prefix}/" if loc.prefix else ""
    out = []
    try:
        pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix):]
                if rel and not rel.endswith("/"):
                    out.append(RemoteFile(rel, obj["Key"], int(obj["Size"]), obj["ETag"].strip('"')))
    except Exception as e:  # botocore raises many types (no credentials, no bucket, no endpoint)
        raise ModelLoadError(f"could not list base model {uri}: {e} (check the AWS environment: credentials, "
                             "AWS_ENDPOINT_URL for MinIO/other endpoints)") from e
    return out


def entry_key(uri: str, variant: str | None, files: list[RemoteFile]) -> str:
    h = hashlib.sha256(json.dumps([uri.rstrip("/"), variant, sorted((f.rel, f.etag) for f in files)]).encode())
    return h.hexdigest()[:20]


def _complete(entry: Path, files: list[RemoteFile]) -> bool:
    try:
        listed = json.loads((entry / FILE_LIST).read_text())
    except (OSError, ValueError):
        return False
    if sorted(listed) != sorted(f.rel for f in files):
        return False
    return all((entry / rel).is_file() and (entry / rel).stat().st_size == meta["size"] for rel, meta in listed.items())


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _download(files: list[RemoteFile], bucket: str, into: Path) -> None:
    from cns_ray.fs import s3_client

    client = s3_client()
    for f in files:
        out = into / f.rel
        out.parent.mkdir(parents=True, exist_ok=True)
        body = client.get_object(Bucket=bucket, Key=f.key, IfMatch=f.etag)["Body"]
        with open(out, "wb") as dst:
            for chunk in iter(lambda: body.read(1 << 24), b""):
                dst.write(chunk)
        got = out.stat().st_size
        if got != f.size:
            raise ModelLoadError(f"s3://{bucket}/{f.key}: copied {got} bytes, the listing says {f.size}: retry the load")
    (into / FILE_LIST).write_text(json.dumps({f.rel: {"size": f.size, "etag": f.etag} for f in files}, indent=1))


def sync_folder(uri: str, cache_dir: Path, variant: str | None = None) -> CachedFolder:
    """The local copy of the diffusers folder at ``uri`` (fetched when missing or changed)."""
    from cns_ray.fs import resolve

    listing = list_folder(uri)
    if not listing:
        raise ModelLoadError(f"no files under {uri}: point --base-model at a diffusers folder (with model_index.json)")
    rels = [f.rel for f in listing]
    variant = variant or detect_variant(rels, uri)
    keep = set(needed_files(rels, variant))
    files = [f for f in listing if f.rel in keep]
    skipped = len(listing) - len(files)
    root = cache_dir / "models"
    entry = root / entry_key(uri, variant, files)
    if _complete(entry, files):
        return CachedFolder(entry, variant, fetched=False)
    with _locked(entry.with_name(entry.name + ".lock")):
        if _complete(entry, files):  # another process filled it while this one waited
            return CachedFolder(entry, variant, fetched=False)
        if entry.exists():  # incomplete (a crash of an older layout, a deleted file): replace it
            shutil.rmtree(entry)
        tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".tmp-", dir=root))
        try:
            log.info("copying %d files of %s (skipping %d a load does not read) to %s", len(files), uri, skipped, entry)
            try:
                _download(files, resolve(uri).bucket, tmp)
            except ModelLoadError:
                raise
            except Exception as e:  # botocore: 412 (changed mid-copy), 403, connection errors
                raise ModelLoadError(f"could not copy base model {uri}: {e}: retry (the folder may have changed)") from e
            os.rename(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return CachedFolder(entry, variant, fetched=True)
