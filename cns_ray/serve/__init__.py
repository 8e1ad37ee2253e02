"""Ray Serve endpoint: ingress (FastAPI) + generator (shared base; per-request tenant swap, or mixed-tenant batches).

Light on import: Ray and the models load only when the app is built.
"""

from cns_ray.serve.config import ServingConfig


def build_app(config: ServingConfig):
    """The bound Serve application (see cns_ray.serve.app)."""
    from cns_ray.serve.app import build_app as _build

    return _build(config)


__all__ = ["ServingConfig", "build_app"]
