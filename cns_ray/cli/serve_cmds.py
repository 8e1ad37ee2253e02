"""``cns serve`` (the endpoint on a local or attached Ray), ``cns generate`` (over HTTP or in-process), ``cns keys``."""

from __future__ import annotations

import argparse
import base64
import os
import sys
import time
from pathlib import Path

from cns_ray.cli import add_common


def register(sub) -> None:
    p = sub.add_parser("serve", help="start the serving endpoint (Ray Serve; binds 127.0.0.1 unless --host)")
    add_common(p)
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default %(default)s; 0.0.0.0 to expose)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default %(default)s)")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster to attach to (default: a new local one)")
    p.add_argument("--replicas", type=int, default=1, help="generator replicas (default %(default)s)")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per generator replica without GPU (default %(default)s)")
    p.add_argument("--keys-file", default=os.environ.get("CNS_KEYS_FILE"), help="JSON {sha256(key): tenant} (see `cns keys add`)")
    p.add_argument("--refresh-ttl", type=float, default=10.0, help="seconds between head-version checks (default %(default)s)")
    p.add_argument("--max-tenants", type=int, default=16, help="tenant states resident per replica (default %(default)s)")
    p.add_argument("--batch-mode", choices=("swap", "mixed"), default="swap",
                   help="swap: one request at a time, delta swapped into the weights; mixed: requests of any tenants "
                        "batched, deltas added per sample, weights never written (default %(default)s)")
    p.add_argument("--max-batch-size", type=int, default=8, help="mixed: most requests per pipeline call (default %(default)s)")
    p.set_defaults(func=cmd_serve)

    g = sub.add_parser("generate", help="generate images with a tenant's concepts (over HTTP with --url, else in-process)")
    add_common(g)
    g.add_argument("prompt", help='e.g. "a photo of <rex> dog"')
    g.add_argument("--tenant", required=True, help="tenant whose concepts the prompt uses")
    g.add_argument("-o", "--output", default="out.png", help="PNG path (n>1: out_1.png, out_2.png, ...)")
    g.add_argument("--url", default=os.environ.get("CNS_URL"), help="endpoint, e.g. http://127.0.0.1:8000 (env CNS_URL)")
    g.add_argument("--api-key", default=os.environ.get("CNS_API_KEY"), help="API key for --url (env CNS_API_KEY)")
    g.add_argument("-n", type=int, default=1, help="images (default %(default)s)")
    g.add_argument("--size", default=None, help="WIDTHxHEIGHT, e.g. 512x512 (default: the model's)")
    g.add_argument("--steps", type=int, default=25, help="denoising steps (default %(default)s)")
    g.add_argument(
        "--guidance", type=float, default=None,
        help="guidance scale (default: the base model's cns_defaults.json, e.g. 4 for tiny; else 7.5; over HTTP: the server's)",
    )
    g.add_argument("--seed", type=int, default=None, help="seed (default: random, printed)")
    g.set_defaults(func=cmd_generate)

    k = sub.add_parser("keys", help="API keys: add one to a keys file, or hash one")
    ksub = k.add_subparsers(dest="keys_cmd", required=True)
    ka = ksub.add_parser("add", help="create a key for a tenant; only its sha256 is written")
    ka.add_argument("--keys-file", required=True)
    ka.add_argument("--tenant", required=True)
    ka.set_defaults(func=cmd_keys_add)
    kh = ksub.add_parser("hash", help="print sha256 of a key (for serve.yaml api_keys / admin_key_sha256)")
    kh.add_argument("key")
    kh.set_defaults(func=cmd_keys_hash)


def cmd_keys_add(args: argparse.Namespace) -> int:
    from cns_ray.serve.auth import add_key_to_file

    key = add_key_to_file(args.keys_file, args.tenant)
    print(f"API key for tenant {args.tenant} (shown once; {args.keys_file} holds only its hash):\n{key}")
    return 0


def cmd_keys_hash(args: argparse.Namespace) -> int:
    from cns_ray.serve.auth import hash_key

    print(hash_key(args.key))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from cns_ray.serve.app import build_app
    from cns_ray.serve.auth import hash_key, new_key
    from cns_ray.serve.config import ServingConfig

    admin_hash, admin_key = None, None
    if not (args.keys_file or os.environ.get("CNS_API_KEYS") or os.environ.get("CNS_ADMIN_KEY")):
        admin_key = new_key("cns-admin")
        admin_hash = hash_key(admin_key)
    store = args.store if args.store.startswith("s3://") else str(Path(args.store).resolve())
    from cns_ray.models.defaults import base_defaults

    cfg = ServingConfig(
        store=store,
        base_model=args.base_model,
        default_guidance=base_defaults(args.base_model).guidance_scale,
        replicas=args.replicas,
        num_cpus=args.num_cpus,
        keys_file=str(Path(args.keys_file).resolve()) if args.keys_file else None,
        admin_key_sha256=admin_hash,
        refresh_ttl_s=args.refresh_ttl,
        max_tenants_per_replica=args.max_tenants,
        batch_mode=args.batch_mode,
        max_batch_size=args.max_batch_size,
    )
    from cns_ray.jobs.ray_env import init_ray

    # A new local Ray binds 127.0.0.1 only; --address attaches to a cluster (RAY_ADDRESS under `ray job submit`).
    init_ray(args.address or "local")
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(build_app(cfg), name="cns", route_prefix="/", blocking=False)
    url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', 'localhost') else args.host}:{args.port}"
    print(f"cns endpoint ready at {url}  (store {cfg.store}, base {cfg.base_model})")
    if admin_key:
        print(
            "no API keys configured: an admin key for this run (any tenant via header X-CNS-Tenant):\n"
            f"  {admin_key}\n"
            f"  cns generate --url {url} --api-key {admin_key} --tenant demo \"a photo of a dog\" -o out.png\n"
            "For tenant keys: `cns keys add --keys-file keys.json --tenant T`, then `cns serve --keys-file keys.json`."
        )
    print("Ctrl-C to stop.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def _write(images: list[bytes], output: str) -> list[str]:
    out = Path(output)
    paths = [out] if len(images) == 1 else [out.with_name(f"{out.stem}_{i + 1}{out.suffix or '.png'}") for i in range(len(images))]
    for p, data in zip(paths, images):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return [str(p) for p in paths]


def cmd_generate(args: argparse.Namespace) -> int:
    if args.url:
        images, seed, version = _generate_http(args)
    else:
        images, seed, version = _generate_local(args)
    for p in _write(images, args.output):
        print(p)
    print(f"seed {seed}, tenant {args.tenant} version {version}", file=sys.stderr)
    return 0


def _generate_http(args: argparse.Namespace):
    import httpx

    if not args.api_key:
        print("error: --url needs --api-key (or env CNS_API_KEY)", file=sys.stderr)
        sys.exit(2)
    body = {"prompt": args.prompt, "n": args.n, "steps": args.steps, "seed": args.seed}
    if args.guidance is not None:
        body["guidance_scale"] = args.guidance
    if args.size:
        body["size"] = args.size
    headers = {"Authorization": f"Bearer {args.api_key}", "X-CNS-Tenant": args.tenant}
    r = httpx.post(args.url.rstrip("/") + "/v1/images/generations", json=body, headers=headers, timeout=600)
    if r.status_code != 200:
        try:
            msg = r.json()["error"]["message"]
        except Exception:  # noqa: BLE001 - not our JSON error
            msg = r.text[:500]
        print(f"error: HTTP {r.status_code}: {msg}", file=sys.stderr)
        sys.exit(2)
    data = r.json()
    return [base64.b64decode(d["b64_json"]) for d in data["data"]], data["seed"], data["version"]


def _generate_local(args: argparse.Namespace):
    """Same code path as a replica: load base + the tenant's head, swap, generate, restore."""
    import asyncio

    from cns_ray.errors import InputError
    from cns_ray.serve.config import ServingConfig
    from cns_ray.serve.generator import GeneratorCore
    from cns_ray.serve.ingress import ApiError, ImageRequest, build_generation

    from cns_ray.models.defaults import base_defaults

    cfg = ServingConfig(store=args.store, base_model=args.base_model, max_steps=max(100, args.steps), max_n=max(4, args.n),
                        default_guidance=base_defaults(args.base_model).guidance_scale)
    core = GeneratorCore(cfg)
    try:
        req = build_generation(
            ImageRequest(prompt=args.prompt, n=args.n, size=args.size, seed=args.seed, steps=args.steps, guidance_scale=args.guidance),
            cfg,
            core.base.resolution,
        )
    except ApiError as e:
        raise InputError(e.message) from e
    from cns_ray.serve.swap import GenerationRequest

    reply = asyncio.run(core.generate(core.new_slot(args.tenant), GenerationRequest(**req)))
    if not reply["ok"]:
        print(f"error: {reply['error']['message']}", file=sys.stderr)
        sys.exit(2)
    return reply["images"], reply["seed"], reply["version"]
