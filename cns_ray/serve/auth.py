"""API keys -> tenants. Only sha256 digests of keys are kept (in files, configs and memory).

Sources, merged: a keys file ``{sha256(key): tenant}``, ``ServingConfig.api_keys`` (same form), and in the
environment ``CNS_API_KEYS="key1:tenantA,key2:tenantB"`` (hashed on read) plus ``CNS_ADMIN_KEY``. The admin key
acts on any tenant named in the ``X-CNS-Tenant`` header. The keys file is re-read when it changes (its mtime, size
or inode; checked on every request, a ``stat``): a key removed from it stops working without a restart. A keys
file that no longer parses keeps the previous keys and logs an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cns_ray.errors import AuthError, ConfigError
from cns_ray.store.names import validate_name

log = logging.getLogger(__name__)

TENANT_HEADER = "X-CNS-Tenant"

__all__ = ["AuthError", "KeyRing", "Principal", "TENANT_HEADER", "add_key_to_file", "hash_key", "new_key", "parse_env_keys", "read_keys_file"]


def hash_key(key: str) -> str:
    """sha256 hex digest of an API key (what is stored)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key(prefix: str = "cns") -> str:
    """A fresh random API key."""
    return f"{prefix}-{secrets.token_urlsafe(24)}"


def parse_env_keys(value: str) -> dict[str, str]:
    """``"key1:tenantA,key2:tenantB"`` -> ``{sha256(key1): "tenantA", ...}``."""
    out: dict[str, str] = {}
    for i, item in enumerate(x.strip() for x in value.split(",")):
        if not item:
            continue
        key, sep, tenant = item.rpartition(":")
        if not sep or not key or not tenant:
            raise ConfigError(f"CNS_API_KEYS entry {i} has no 'key:tenant' form: write CNS_API_KEYS='key1:tenantA,key2:tenantB'")
        out[hash_key(key)] = validate_name(tenant.strip(), "tenant")
    return out


def read_keys_file(path: str | Path) -> dict[str, str]:
    """A JSON keys file ``{sha256(key): tenant}``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"keys file {path} does not exist: create it with `cns keys add --keys-file {path} --tenant T`") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"keys file {path} is not valid JSON ({e}): it must be {{\"<sha256 of key>\": \"tenant\"}}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"keys file {path} must hold a JSON object {{\"<sha256 of key>\": \"tenant\"}}")
    out = {}
    for h, tenant in data.items():
        if not (isinstance(h, str) and len(h) == 64 and all(c in "0123456789abcdef" for c in h)):
            raise ConfigError(f"keys file {path}: entry {str(h)[:8]}... is not a sha256 hex digest: store hashes, never keys")
        out[h] = validate_name(tenant, "tenant")
    return out


def add_key_to_file(path: str | Path, tenant: str) -> str:
    """Create a key for ``tenant``, store its hash in the keys file, return the key (shown once)."""
    path = Path(path)
    validate_name(tenant, "tenant")
    data = read_keys_file(path) if path.exists() else {}
    key = new_key()
    data[hash_key(key)] = tenant
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return key


@dataclass(frozen=True)
class Principal:
    """Who is calling and which tenant they act on."""

    tenant: str
    is_admin: bool = False


class KeyRing:
    """Digest -> tenant lookup plus the admin digest."""

    def __init__(self, tenants_by_hash: dict[str, str], admin_hash: str | None = None, keys_file: str | None = None):
        self._static = dict(tenants_by_hash)  # config and environment keys
        self._admin = admin_hash
        self._file = Path(keys_file) if keys_file else None
        self._file_sig: tuple | None = None
        self._from_file: dict[str, str] = {}
        self._by_hash = dict(self._static)
        self._refresh()

    def _refresh(self) -> None:
        """Re-read the keys file if it changed since the last read."""
        if self._file is None:
            return
        try:
            st = self._file.stat()
            sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            sig = None
        if sig == self._file_sig:
            return
        try:
            keys = read_keys_file(self._file) if sig is not None else {}
        except ConfigError as e:
            if self._file_sig is None:
                raise
            log.error("keys file changed but cannot be read, keeping the previous keys: %s", e)
            return
        if sig is None and self._file_sig is not None:
            log.warning("keys file %s is gone: its keys no longer work", self._file)
        self._file_sig = sig
        self._from_file = keys
        self._by_hash = {**keys, **self._static}

    @classmethod
    def from_config(cls, keys_file: str | None, api_keys: dict[str, str], admin_key_sha256: str | None, read_env: bool = True) -> "KeyRing":
        by_hash: dict[str, str] = {}
        if keys_file:
            read_keys_file(keys_file)  # a bad keys file stops the start with a clear error
        by_hash.update({h.lower(): validate_name(t, "tenant") for h, t in api_keys.items()})
        admin = admin_key_sha256.lower() if admin_key_sha256 else None
        if read_env:
            if os.environ.get("CNS_API_KEYS"):
                by_hash.update(parse_env_keys(os.environ["CNS_API_KEYS"]))
            if os.environ.get("CNS_ADMIN_KEY"):
                admin = hash_key(os.environ["CNS_ADMIN_KEY"])
        if not by_hash and not admin and not keys_file:
            log.warning("no API keys configured: every request will get 401 (set CNS_API_KEYS or a keys file)")
        return cls(by_hash, admin, keys_file)

    @property
    def n_keys(self) -> int:
        self._refresh()
        return len(self._by_hash) + (1 if self._admin else 0)

    def authenticate_admin(self, authorization: str | None, api_key: str | None) -> None:
        """Only the admin key passes (operator routes such as ``/metrics``, which name every tenant)."""
        key = None
        if authorization:
            scheme, _, value = authorization.partition(" ")
            key = value.strip() if scheme.lower() == "bearer" else None
        elif api_key:
            key = api_key.strip()
        if not key:
            raise AuthError("missing API key: this route needs the admin key ('Authorization: Bearer <admin key>')")
        if self._admin is None or not secrets.compare_digest(hash_key(key), self._admin):
            raise AuthError("this route needs the admin key: it shows every tenant's traffic", 403)

    def authenticate(self, authorization: str | None, api_key: str | None, tenant_header: str | None) -> Principal:
        """Resolve ``Authorization: Bearer KEY`` (or ``X-API-Key: KEY``) to a :class:`Principal`."""
        key = None
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise AuthError("Authorization header must be 'Bearer <api key>'")
            key = value.strip()
        elif api_key:
            key = api_key.strip()
        if not key:
            raise AuthError("missing API key: send 'Authorization: Bearer <api key>'")
        digest = hash_key(key)
        self._refresh()
        if self._admin is not None and secrets.compare_digest(digest, self._admin):
            if not tenant_header:
                raise AuthError(f"the admin key acts on one tenant per request: add the header {TENANT_HEADER}: <tenant>", 400)
            return Principal(validate_name(tenant_header, "tenant"), is_admin=True)
        tenant = self._by_hash.get(digest)
        if tenant is None:
            raise AuthError("invalid API key")
        if tenant_header and tenant_header != tenant:
            raise AuthError(f"this API key may not act on tenant {tenant_header!r}; only the admin key may set {TENANT_HEADER}", 403)
        return Principal(tenant)
