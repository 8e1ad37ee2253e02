"""Storage backends behind one interface: a local folder or an S3 prefix.

What the store needs from storage, and how each backend gives it:
- ``put_once``: create a key only if absent (local: temp file + ``os.link``; S3: ``put_object(IfNoneMatch="*")``);
  idempotent: meeting an object with the same bytes is this write (its response was lost and a retry saw it).
- ``replace``: conditional replace of the manifest (local: an exclusive ``flock`` + compare the content hash +
  temp file + ``os.replace``; S3: ``put_object(IfMatch=etag)``, or ``IfNoneMatch="*"`` to create it).
- ``get_if_changed``: a conditional read (S3: ``If-None-Match``), so a head check of an unchanged head moves no data.
- whole-object reads and atomic whole-object writes, listing (with sizes and ages), delete.

Keys are ``/``-separated and relative to the store root; they are built only from validated names.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass

from cns_ray.errors import NotFoundError, StoreError
from cns_ray.fs import resolve, s3_client, s3_endpoint

log = logging.getLogger(__name__)


class KeyExists(Exception):
    """put_once found the key already there."""


class PreconditionFailed(Exception):
    """replace found another version of the object than expected."""


NOT_MODIFIED = object()
"""What :meth:`Backend.get_if_changed` returns when the object still has the given tag."""


@dataclass(frozen=True)
class Entry:
    """One listed object: key relative to the root, size, last modification (epoch seconds)."""

    key: str
    size: int
    mtime: float


class Backend(ABC):
    def __init__(self, root_uri: str):
        self.root_uri = root_uri.rstrip("/")

    def uri(self, key: str = "") -> str:
        return f"{self.root_uri}/{key}" if key else self.root_uri

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Whole object; :class:`NotFoundError` if absent."""

    @abstractmethod
    def get_tagged(self, key: str) -> tuple[bytes, str] | None:
        """(data, tag) where tag identifies this exact content for :meth:`replace`; None if absent."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Atomic create-or-overwrite (readers see the old or the new object, never a part)."""

    def put_once(self, key: str, data: bytes) -> None:
        """Atomic create; :class:`KeyExists` if the key holds other bytes. Meeting the same bytes is success: a retried
        request whose first response was lost finds its own write."""
        try:
            self._create(key, data)
        except KeyExists:
            got = self.get_tagged(key)
            if got is None or hashlib.sha256(got[0]).digest() != hashlib.sha256(data).digest():
                raise
            log.info("%s already holds these exact bytes: taking it as this write (a lost response retried)", self.uri(key))

    @abstractmethod
    def _create(self, key: str, data: bytes) -> None:
        """Atomic create; :class:`KeyExists` if the key exists."""

    def get_if_changed(self, key: str, tag: str | None):
        """``NOT_MODIFIED`` if the object still has ``tag``, else (data, tag), or None if absent."""
        got = self.get_tagged(key)
        if got is not None and tag is not None and got[1] == tag:
            return NOT_MODIFIED
        return got

    @abstractmethod
    def list_entries(self, prefix: str) -> list[Entry]:
        """Every object under ``prefix`` (recursive), temporary files included, with size and age."""

    @abstractmethod
    def replace(self, key: str, data: bytes, expected: str | None) -> None:
        """Write ``data`` only if the object's tag is still ``expected`` (None: it must not exist);
        else :class:`PreconditionFailed`. Two concurrent callers with the same ``expected``: exactly one wins."""

    @abstractmethod
    def list_dirs(self, prefix: str) -> list[str]:
        """Names of the immediate sub-folders of ``prefix``."""

    @abstractmethod
    def list_files(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (recursive), relative to the root."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove a key; no error if absent."""

    def exists(self, key: str) -> bool:
        return self.get_tagged(key) is not None

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under ``prefix`` (a folder)."""
        for e in self.list_entries(prefix):
            self.delete(e.key)


def open_backend(uri: str) -> Backend:
    try:
        loc = resolve(uri)
    except ValueError as e:
        raise StoreError(str(e)) from e
    if loc.is_s3:
        return S3Backend(f"s3://{loc.bucket}/{loc.prefix}".rstrip("/"), loc.bucket, loc.prefix)
    return LocalBackend(loc.path, loc.path)


# ---------------------------------------------------------------------------------------------- local
class LocalBackend(Backend):
    def __init__(self, root_uri: str, root: str):
        super().__init__(root_uri)
        self.root = root

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/"))

    def _tmp(self, path: str) -> str:
        d, b = os.path.split(path)
        os.makedirs(d, exist_ok=True)
        return os.path.join(d, f".{b}.tmp-{uuid.uuid4().hex}")

    @staticmethod
    def _write(path: str, data: bytes) -> None:
        try:
            f = open(path, "wb")
        except FileNotFoundError:  # the folder was just removed as empty by a delete: make it again
            os.makedirs(os.path.dirname(path), exist_ok=True)
            f = open(path, "wb")
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    @staticmethod
    def _fsync_dir(path: str) -> None:
        fd = os.open(os.path.dirname(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def get(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except FileNotFoundError as e:
            raise NotFoundError(f"{self.uri(key)} does not exist") from e
        except OSError as e:
            raise StoreError(f"cannot read {self.uri(key)}: {e}") from e

    def get_tagged(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self.get(key)
        except NotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            tmp = self._tmp(path)
            self._write(tmp, data)
            os.replace(tmp, path)
            self._fsync_dir(path)
        except OSError as e:
            raise StoreError(f"cannot write {self.uri(key)}: {e}") from e

    def _create(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            tmp = self._tmp(path)
        except OSError as e:
            raise StoreError(f"cannot create folder for {self.uri(key)}: {e}") from e
        try:
            self._write(tmp, data)
            os.link(tmp, path)  # atomic, fails if path exists
            self._fsync_dir(path)
        except FileExistsError as e:
            raise KeyExists(key) from e
        except OSError as e:
            raise StoreError(f"cannot write {self.uri(key)}: {e}") from e
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def replace(self, key: str, data: bytes, expected: str | None) -> None:
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # flock locks an open file description: it excludes other processes and other threads (each opens its own).
        with open(f"{os.path.dirname(path)}/.{os.path.basename(path)}.lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                current = self.get_tagged(key)
                found = current[1] if current else None
                if found != expected:
                    raise PreconditionFailed(key)
                self.put(key, data)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def list_dirs(self, prefix: str) -> list[str]:
        try:
            with os.scandir(self._path(prefix)) as it:
                return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
        except FileNotFoundError:
            return []

    def list_files(self, prefix: str) -> list[str]:
        out = []
        base = self._path(prefix)
        for dirpath, _, files in os.walk(base):
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            out.extend(f"{rel}/{f}" for f in files if not f.startswith("."))
        return sorted(out)

    def delete_prefix(self, prefix: str) -> None:
        if prefix.strip("/"):
            shutil.rmtree(self._path(prefix), ignore_errors=True)

    def list_entries(self, prefix: str) -> list[Entry]:
        out = []
        for dirpath, _, files in os.walk(self._path(prefix)):
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            for f in files:
                with contextlib.suppress(FileNotFoundError):
                    st = os.stat(os.path.join(dirpath, f))
                    out.append(Entry(f"{rel}/{f}", st.st_size, st.st_mtime))
        return sorted(out, key=lambda e: e.key)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._path(key))
        with contextlib.suppress(OSError):  # drop the emptied folder (a writer racing this recreates it: _tmp)
            d = os.path.dirname(self._path(key))
            if os.path.abspath(d) != os.path.abspath(self.root) and not os.listdir(d):
                os.rmdir(d)


# ---------------------------------------------------------------------------------------------- S3
_CONFLICT_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


class S3Backend(Backend):
    def __init__(self, root_uri: str, bucket: str, prefix: str):
        super().__init__(root_uri)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = s3_client()

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextlib.contextmanager
    def _errors(self, key: str, conflict: type[Exception] | None = None):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = str(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if conflict is not None and (code in _CONFLICT_CODES or status in ("412", "409")):
                raise conflict(key) from e
            if code in _MISSING_CODES:
                raise NotFoundError(f"{self.uri(key)} does not exist") from e
            if code == "NoSuchBucket":
                raise StoreError(f"bucket {self.bucket!r} does not exist (endpoint {s3_endpoint() or 'AWS'}): create it or fix --store") from e
            raise StoreError(f"S3 request on {self.uri(key)} failed: {code or status}: {e}") from e
        except BotoCoreError as e:
            raise StoreError(
                f"cannot reach S3 for {self.uri(key)} ({e}); check AWS credentials and AWS_ENDPOINT_URL "
                f"(now {s3_endpoint() or 'unset'})"
            ) from e

    def get(self, key: str) -> bytes:
        with self._errors(key):
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def get_tagged(self, key: str) -> tuple[bytes, str] | None:
        try:
            with self._errors(key):
                r = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
                return r["Body"].read(), r["ETag"]
        except NotFoundError:
            return None

    def exists(self, key: str) -> bool:
        try:
            with self._errors(key):
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except NotFoundError:
            return False

    def get_if_changed(self, key: str, tag: str | None):
        from botocore.exceptions import ClientError

        kw = {"IfNoneMatch": tag} if tag else {}
        try:
            with self._errors(key):
                try:
                    r = self.client.get_object(Bucket=self.bucket, Key=self._key(key), **kw)
                except ClientError as e:
                    if str(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")) == "304" or \
                            str(e.response.get("Error", {}).get("Code", "")) in ("304", "NotModified"):
                        return NOT_MODIFIED
                    raise
                return r["Body"].read(), r["ETag"]
        except NotFoundError:
            return None

    def list_entries(self, prefix: str) -> list[Entry]:
        full = self._key(prefix).rstrip("/") + "/"
        cut = len(self.prefix) + 1 if self.prefix else 0
        out = []
        with self._errors(prefix):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                out += [Entry(o["Key"][cut:], int(o["Size"]), o["LastModified"].timestamp()) for o in page.get("Contents", [])]
        return sorted(out, key=lambda e: e.key)

    def put(self, key: str, data: bytes) -> None:
        with self._errors(key):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def _create(self, key: str, data: bytes) -> None:
        with self._errors(key, KeyExists):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")

    def replace(self, key: str, data: bytes, expected: str | None) -> None:
        cond = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        try:
            with self._errors(key, PreconditionFailed):
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **cond)
        except NotFoundError as e:  # If-Match on a key that is gone: the precondition failed too
            raise PreconditionFailed(key) from e

    def _list(self, prefix: str, delimiter: bool) -> tuple[list[str], list[str]]:
        full = self._key(prefix).rstrip("/") + "/"
        full = "" if full == "/" else full  # the bucket's root
        kw = {"Bucket": self.bucket, "Prefix": full, **({"Delimiter": "/"} if delimiter else {})}
        keys, dirs = [], []
        with self._errors(prefix):
            for page in self.client.get_paginator("list_objects_v2").paginate(**kw):
                keys += [o["Key"] for o in page.get("Contents", [])]
                dirs += [p["Prefix"][len(full):].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return keys, dirs

    def list_dirs(self, prefix: str) -> list[str]:
        return sorted(self._list(prefix, True)[1])

    def list_files(self, prefix: str) -> list[str]:
        cut = len(self.prefix) + 1 if self.prefix else 0
        return sorted(k[cut:] for k in self._list(prefix, False)[0])

    def delete(self, key: str) -> None:
        with self._errors(key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
