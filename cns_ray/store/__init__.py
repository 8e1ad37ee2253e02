"""The concept store: per-tenant immutable versions in Parquet on a local folder or S3 (see store.py)."""

from cns_ray.store.codec import delta_nbytes
from cns_ray.store.maintenance import load_export
from cns_ray.store.names import validate_name, validate_token
from cns_ray.store.state import ConceptRecord, TenantState, VersionInfo
from cns_ray.store.store import ConceptStore

__all__ = [
    "ConceptRecord",
    "ConceptStore",
    "TenantState",
    "VersionInfo",
    "delta_nbytes",
    "load_export",
    "validate_name",
    "validate_token",
]
