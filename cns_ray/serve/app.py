"""Build the Serve application: Ingress (FastAPI) -> Generator (shared base, tenants multiplexed).

``build_app(config)`` from Python; ``app_builder(args)`` for Serve config files
(``import_path: cns_ray.serve.app:app_builder`` with ``args`` = ServingConfig fields, see deploy/serve.yaml).
"""

from __future__ import annotations

import logging

from cns_ray.serve.config import ServingConfig

log = logging.getLogger(__name__)

APP_NAME = "cns"
ROUTE_PREFIX = "/"


def _wants_gpu(cfg: ServingConfig) -> bool:
    """``use_gpu`` as given, else whether the cluster has or may add GPUs (autoscaling GPU workers at 0 count)."""
    if cfg.use_gpu is not None:
        return cfg.use_gpu
    from cns_ray.jobs.ray_env import gpus_possible

    return gpus_possible() > 0


def build_app(config: ServingConfig):
    """The bound Serve application for ``config`` (pass it to ``serve.run``)."""
    from cns_ray.serve.generator import Generator
    from cns_ray.serve.ingress import Ingress

    cfg = config.to_dict()
    gpu = _wants_gpu(config)
    actor_opts = {"num_gpus": 1, "num_cpus": 1} if gpu else {"num_cpus": config.num_cpus}
    gen_opts: dict = {"ray_actor_options": actor_opts, "max_ongoing_requests": config.generator_ongoing()}
    if config.batch_mode == "mixed":  # no multiplexed ids on mixed calls: route by the tenant argument
        from ray.serve.config import RequestRouterConfig

        from cns_ray.serve.routing import ROUTER_PATH

        gen_opts["request_router_config"] = RequestRouterConfig(request_router_class=ROUTER_PATH)
    if config.autoscaling:
        gen_opts["autoscaling_config"] = dict(config.autoscaling)
    else:
        gen_opts["num_replicas"] = config.replicas
    generator = Generator.options(**gen_opts).bind(cfg)
    log.info("serving app: store %s, base %s, %s, gpu=%s", config.store, config.base_model, gen_opts, gpu)
    return Ingress.options(ray_actor_options={"num_cpus": config.ingress_num_cpus}).bind(generator, cfg)


def app_builder(args: dict):
    """Serve config entry point: ``args`` are ServingConfig fields (unknown ones are refused). Without
    ``default_guidance`` the base model's own default is used (its ``cns_defaults.json``, else 7.5)."""
    args = dict(args or {})
    if "default_guidance" not in args:
        from cns_ray.models.defaults import base_defaults

        args["default_guidance"] = base_defaults(args.get("base_model") or ServingConfig.base_model).guidance_scale
    return build_app(ServingConfig.from_dict(args))
