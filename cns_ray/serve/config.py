"""ServingConfig: everything the Serve app needs, validated at construction and passed whole."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from cns_ray.config import DEFAULT_BASE_MODEL, DEFAULT_STORE_URI, ConfigError


@dataclass(frozen=True)
class ServingConfig:
    """The serving endpoint: store, base model, replicas, limits and API keys."""

    store: str = DEFAULT_STORE_URI
    """Concept store URI (folder or ``s3://bucket/prefix``)."""
    base_model: str = DEFAULT_BASE_MODEL
    """``tiny`` (embedded, trained on the toy world), ``tiny-random`` (random weights, for tests), a diffusers
    folder, or ``s3://`` of one."""
    replicas: int = 1
    """Generator replicas (ignored when ``autoscaling`` is set)."""
    autoscaling: dict | None = None
    """Serve ``autoscaling_config`` for the generator (e.g. ``{"min_replicas": 1, "max_replicas": 4}``)."""
    use_gpu: bool | None = None
    """One GPU per generator replica; None = when the cluster has GPUs."""
    num_cpus: float = 0.5
    """CPUs per generator replica when it has no GPU (fractional on small machines)."""
    ingress_num_cpus: float = 0.1
    """CPUs of the ingress replica."""
    torch_threads: int = 0
    """torch intra-op threads in a generator replica (0 = torch's default)."""
    batch_mode: str = "mixed"
    """How a generator replica runs requests: ``mixed`` (the default: up to ``max_batch_size`` requests of any
    tenants in one pipeline call, each tenant's delta added per sample on the cross-attention K/V outputs, the
    weights not written; a call of one tenant state swaps it in and restores it exactly: cns_ray/serve/batch.py) or
    ``swap`` (one request at a time, the tenant's delta swapped into the shared weights and restored: a request's
    image is the same bytes however traffic is mixed; mixed images are within a pixel level or two of those)."""
    max_batch_size: int = 8
    """``mixed``: most requests per pipeline call (requests share a call only with the same size, steps, guidance)."""
    batch_wait_timeout_s: float = 0.01
    """``mixed``: how long the first request of a batch waits for others."""
    generator_max_ongoing_requests: int | None = None
    """Requests one generator replica takes at once, running and queued (Serve's ``max_ongoing_requests``); None =
    16 in ``swap`` mode, ``max(16, 3 * max_batch_size)`` in ``mixed`` mode so that a full batch gathers behind the one
    running (with fewer, calls run part-empty under load: benchmarks/README.md, mixed batches over HTTP)."""
    max_tenants_per_replica: int = 16
    """Tenant states kept resident per replica (LRU through Serve's model multiplexing)."""
    refresh_ttl_s: float = 10.0
    """A tenant's head version is re-checked at most this often; a newer version is loaded on the next request."""
    max_prompt_chars: int = 1000
    """Longest prompt accepted."""
    max_n: int = 4
    """Most images per request."""
    max_size: int | None = None
    """Largest image side in pixels (sizes must also be multiples of 8); None = 2x the base's native side."""
    max_request_cost: int | None = None
    """Most ``n * steps * height * width`` of one request (what a request costs the replica's one worker);
    None = ``max_n * 2 * default_steps * native**2`` (e.g. 4 images at native size with twice the default steps)."""
    max_in_flight_per_tenant: int = 4
    """Most requests one tenant may have in flight at the ingress (per ingress replica); more get 429 +
    ``Retry-After``, so one tenant cannot fill every slot while others wait."""
    max_json_bytes: int = 64 * 1024
    """Largest JSON request body (generation, rollback)."""
    body_timeout_s: float = 30.0
    """A request body must arrive within this many seconds (slow or half-sent bodies get 408 and free their slot)."""
    max_upload_pixels: int = 4096 * 4096
    """Largest uploaded concept image (width x height), checked before it is decoded (decompression bombs)."""
    public_metrics: bool = False
    """Serve ``GET /metrics`` without a key. Off: it needs the admin key (its labels name every tenant)."""
    safety_checker: bool = False
    """Run the base folder's safety checker on every image (the folder must ship ``safety_checker/`` and
    ``feature_extractor/``); flagged images are answered blank, as diffusers does. Off by default: see README."""
    default_size: int | None = None
    """Image side when the request gives none; None = the base model's native resolution."""
    max_steps: int = 100
    """Most denoising steps per request."""
    default_steps: int = 25
    """Denoising steps when the request gives none."""
    default_guidance: float = 7.5
    """Classifier-free guidance scale when the request gives none."""
    max_upload_bytes: int = 20 * 1024 * 1024
    """Largest total upload of concept images per learn request."""
    max_upload_files: int = 32
    """Most images per learn request."""
    synth_library: str | None = None
    """Store holding the concept library (``library/{base_id}/``, ``python -m pipelines.build_library``) that
    ``method=synthesize`` reads with ``source=blend`` or ``nearest``; None = ``store``."""
    learn_steps: int | None = None
    """Default learning steps of a learn request; None = the served base's own default (its ``cns_defaults.json``:
    tiny 300, a bare folder 500). A request may give its own, up to ``max_learn_steps``."""
    max_learn_steps: int = 2000
    """Most learning steps a learn request may ask for."""
    keys_file: str | None = None
    """JSON file ``{sha256(key): tenant}``; hashes only, never keys."""
    api_keys: dict[str, str] = field(default_factory=dict)
    """More ``{sha256(key): tenant}`` entries (e.g. from serve.yaml)."""
    admin_key_sha256: str | None = None
    """sha256 of the operator key (may act on any tenant through the ``X-CNS-Tenant`` header)."""
    read_env_keys: bool = True
    """Also read ``CNS_API_KEYS`` (``key1:tenantA,key2:tenantB``) and ``CNS_ADMIN_KEY`` in the ingress replica."""
    fault_marker: str | None = None
    """TESTS ONLY: a prompt containing this string fails inside the swapped region, mid-generation."""
    scheduler_name: str = "cns-scheduler"
    """Name of the learning scheduler actor (namespace ``scheduler_namespace``)."""
    scheduler_namespace: str = "cns"
    """Ray namespace of the scheduler actor."""

    def __post_init__(self) -> None:
        p: list[str] = []

        def check(cond: bool, msg: str) -> None:
            if not cond:
                p.append(msg)

        check(bool(self.store), "store must not be empty: give a folder or s3://bucket/prefix")
        check(bool(self.base_model), "base_model must not be empty: give 'tiny' (the embedded default) or a diffusers folder")
        check(self.replicas >= 1, f"replicas={self.replicas} must be >= 1")
        check(self.num_cpus > 0, f"num_cpus={self.num_cpus} must be > 0 (fractional is fine, e.g. 0.5)")
        check(self.ingress_num_cpus > 0, f"ingress_num_cpus={self.ingress_num_cpus} must be > 0")
        check(self.torch_threads >= 0, f"torch_threads={self.torch_threads} must be >= 0 (0 = default)")
        check(self.batch_mode in ("swap", "mixed"), f"batch_mode={self.batch_mode!r} must be 'swap' or 'mixed'")
        check(1 <= self.max_batch_size <= 256, f"max_batch_size={self.max_batch_size} must be in [1, 256]")
        check(0 <= self.batch_wait_timeout_s <= 10, f"batch_wait_timeout_s={self.batch_wait_timeout_s} must be in [0, 10] seconds")
        check(self.generator_max_ongoing_requests is None or self.generator_max_ongoing_requests >= 1,
              f"generator_max_ongoing_requests={self.generator_max_ongoing_requests} must be None or >= 1")
        check(self.max_tenants_per_replica >= 1, f"max_tenants_per_replica={self.max_tenants_per_replica} must be >= 1")
        check(self.refresh_ttl_s >= 0, f"refresh_ttl_s={self.refresh_ttl_s} must be >= 0")
        check(self.max_prompt_chars >= 1, f"max_prompt_chars={self.max_prompt_chars} must be >= 1")
        check(self.max_n >= 1, f"max_n={self.max_n} must be >= 1")
        check(self.max_size is None or (self.max_size >= 8 and self.max_size % 8 == 0),
              f"max_size={self.max_size} must be None (2x the base's side) or a multiple of 8, >= 8")
        check(
            self.default_size is None or (8 <= self.default_size <= (self.max_size or 1 << 30) and self.default_size % 8 == 0),
            f"default_size={self.default_size} must be None or a multiple of 8 in [8, max_size={self.max_size}]",
        )
        check(self.max_request_cost is None or self.max_request_cost >= 64,
              f"max_request_cost={self.max_request_cost} must be None or >= 64 (n * steps * height * width)")
        check(self.max_in_flight_per_tenant >= 1, f"max_in_flight_per_tenant={self.max_in_flight_per_tenant} must be >= 1")
        check(self.max_json_bytes >= 1024, f"max_json_bytes={self.max_json_bytes} must be >= 1024")
        check(self.body_timeout_s > 0, f"body_timeout_s={self.body_timeout_s} must be > 0 seconds")
        check(self.max_upload_pixels >= 64 * 64, f"max_upload_pixels={self.max_upload_pixels} must be >= 4096 (64x64)")
        check(1 <= self.default_steps <= self.max_steps, f"default_steps={self.default_steps} must be in [1, max_steps={self.max_steps}]")
        check(self.default_guidance >= 0, f"default_guidance={self.default_guidance} must be >= 0")
        check(self.max_upload_bytes >= 1, f"max_upload_bytes={self.max_upload_bytes} must be >= 1")
        check(self.max_upload_files >= 1, f"max_upload_files={self.max_upload_files} must be >= 1")
        check(self.learn_steps is None or 1 <= self.learn_steps <= self.max_learn_steps, f"learn_steps={self.learn_steps} must be in [1, max_learn_steps={self.max_learn_steps}]")
        bad = [h for h in self.api_keys if not _is_sha256(h)]
        check(not bad, f"api_keys must map sha256 hex digests (64 hex chars) to tenants; got {len(bad)} other key(s): store hashes, never keys")
        check(
            self.admin_key_sha256 is None or _is_sha256(self.admin_key_sha256),
            "admin_key_sha256 must be a sha256 hex digest (64 hex chars): `cns keys hash KEY` prints one",
        )
        check(self.fault_marker is None or bool(self.fault_marker), "fault_marker must be None or a non-empty string")
        if p:
            raise ConfigError("invalid ServingConfig: " + "; ".join(p))

    def generator_ongoing(self) -> int:
        """The generator replicas' ``max_ongoing_requests`` (see ``generator_max_ongoing_requests``)."""
        if self.generator_max_ongoing_requests is not None:
            return self.generator_max_ongoing_requests
        return max(16, 3 * self.max_batch_size) if self.batch_mode == "mixed" else 16

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ServingConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown ServingConfig option(s) {unknown}: known options are {sorted(known)}")
        return cls(**d)


def _is_sha256(h: object) -> bool:
    return isinstance(h, str) and len(h) == 64 and all(c in "0123456789abcdef" for c in h.lower())
