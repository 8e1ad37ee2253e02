"""``cns serve`` (the endpoint on a local or attached Ray), ``cns generate`` (over HTTP or in-process), ``cns keys``."""

from __future__ import annotations

import argparse
import base64
import os
import sys
import time
from pathlib import Path

from cns_ray.cli import add_common


SERVE_EPILOG = """API keys and the admin key:
  tenant keys   `cns keys add --keys-file keys.json --tenant T` prints a key once and stores only its sha256; pass
                --keys-file (re-read when it changes: a removed key stops working at once), or set
                CNS_API_KEYS='key1:tenantA,key2:tenantB' in the environment.
  admin key     acts on any tenant named in the X-CNS-Tenant header. Set it with CNS_ADMIN_KEY=<key> in the
                environment, or --admin-key-sha256 $(cns keys hash <key>) (only the hash is kept). With no keys
                configured at all, `cns serve` makes an admin key for this run and prints it.
Stopping: Ctrl-C or SIGTERM drains in-flight requests, then stops Serve (and the local Ray it started).
"""


def register(sub) -> None:
    p = sub.add_parser("serve", help="start the serving endpoint (Ray Serve; binds 127.0.0.1 unless --host)",
                       epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default %(default)s; 0.0.0.0 to expose)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default %(default)s)")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster to attach to (default: a new local one)")
    p.add_argument("--replicas", type=int, default=1, help="generator replicas (default %(default)s)")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per generator replica without GPU (default %(default)s)")
    p.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None,
                   help="one GPU per generator replica (--no-gpu: none); default: when the cluster has or may add GPUs")
    p.add_argument("--keys-file", default=os.environ.get("CNS_KEYS_FILE"), help="JSON {sha256(key): tenant} (see `cns keys add`)")
    p.add_argument("--refresh-ttl", type=float, default=10.0, help="seconds between head-version checks (default %(default)s)")
    p.add_argument("--max-tenants", type=int, default=16, help="tenant states resident per replica (default %(default)s)")
    p.add_argument("--batch-mode", choices=("swap", "mixed"), default="mixed",
                   help="mixed: requests of any tenants batched, deltas added per sample; swap: one request at a time, "
                        "delta swapped into the weights, images the same bytes under any mix (default %(default)s)")
    p.add_argument("--max-batch-size", type=int, default=8, help="mixed: most requests per pipeline call (default %(default)s)")
    p.add_argument("--admin-key-sha256", default=None, help="sha256 of the admin key (`cns keys hash KEY`); or set CNS_ADMIN_KEY")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch threads per generator replica (default %(default)s; `cns generate` in-process uses the same "
                        "default, so both give the same bytes)")
    p.add_argument("--max-size", type=int, default=None, help="largest image side (default: 2x the base model's native side)")
    p.add_argument("--max-request-cost", type=int, default=None,
                   help="most n*steps*height*width per request (default: max_n * 2 * default_steps * native**2)")
    p.add_argument("--max-in-flight-per-tenant", type=int, default=4, help="requests one tenant may have in flight (default %(default)s)")
    p.add_argument("--drain-timeout", type=float, default=120.0,
                   help="on SIGTERM/Ctrl-C: seconds to wait for requests in flight before stopping (default %(default)s)")
    p.add_argument("--safety-checker", action="store_true",
                   help="run the base folder's safety checker on every image (off by default; see README)")
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
    g.add_argument("--torch-threads", type=int, default=1,
                   help="in-process: torch threads (default %(default)s, as `cns serve`: the same request gives the same bytes)")
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


def port_free(host: str, port: int) -> bool:
    """Whether nothing listens on (host, port). Serve binds with SO_REUSEPORT, so a second endpoint on a used port
    would silently share it: check with a plain bind (SO_REUSEADDR only, which a TIME_WAIT socket does not block)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _drain(app_name: str, timeout_s: float) -> None:
    """Refuse new requests and wait (at most ``timeout_s``) until the ingress has none in flight."""
    from ray import serve

    try:
        ingress = serve.get_deployment_handle("Ingress", app_name=app_name)
        deadline = time.monotonic() + timeout_s
        while (left := ingress.drain.remote().result(timeout_s=30)) and time.monotonic() < deadline:
            print(f"draining: {left} request(s) in flight", file=sys.stderr, flush=True)
            time.sleep(0.5)
    except Exception as e:  # noqa: BLE001 - the app never started or is gone: nothing to drain
        print(f"drain skipped ({type(e).__name__}: {e})", file=sys.stderr, flush=True)


def cmd_serve(args: argparse.Namespace) -> int:
    import signal

    import ray
    from ray import serve

    from cns_ray.errors import ConfigError
    from cns_ray.serve.app import APP_NAME, build_app
    from cns_ray.serve.auth import hash_key, new_key
    from cns_ray.serve.config import ServingConfig

    if not port_free(args.host, args.port):
        raise ConfigError(f"port {args.port} on {args.host} is already in use (another `cns serve`?): stop it, or pick "
                          "another with --port")
    admin_hash, admin_key = args.admin_key_sha256, None
    if not (args.keys_file or admin_hash or os.environ.get("CNS_API_KEYS") or os.environ.get("CNS_ADMIN_KEY")):
        admin_key = new_key("cns-admin")
        admin_hash = hash_key(admin_key)
    store = args.store if args.store.startswith("s3://") else str(Path(args.store).resolve())
    from cns_ray.models.defaults import base_defaults

    cfg = ServingConfig(
        store=store,
        base_model=args.base_model,
        default_guidance=base_defaults(args.base_model).guidance_scale,
        replicas=args.replicas,
        use_gpu=args.gpu,
        num_cpus=args.num_cpus,
        keys_file=str(Path(args.keys_file).resolve()) if args.keys_file else None,
        admin_key_sha256=admin_hash,
        refresh_ttl_s=args.refresh_ttl,
        max_tenants_per_replica=args.max_tenants,
        batch_mode=args.batch_mode,
        max_batch_size=args.max_batch_size,
        torch_threads=args.torch_threads,
        max_size=args.max_size,
        max_request_cost=args.max_request_cost,
        max_in_flight_per_tenant=args.max_in_flight_per_tenant,
        safety_checker=args.safety_checker,
    )
    from cns_ray.jobs.ray_env import check_gpu_request, init_ray

    def _stop(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # A new local Ray binds 127.0.0.1 only; --address attaches to a cluster (RAY_ADDRESS under `ray job submit`).
    attached = bool(args.address)
    try:
        check_gpu_request(bool(args.gpu), init_ray(args.address or "local"))  # --gpu on a local Ray without GPUs: refused
        # SIGTERM drains like Ctrl-C (the default, and Ray's own handler, would leave Ray processes behind); set after
        # Ray started, which installs a handler of its own
        signal.signal(signal.SIGTERM, _stop)
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(build_app(cfg), name=APP_NAME, route_prefix="/", blocking=False)
        url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', 'localhost') else args.host}:{args.port}"
        print(f"cns endpoint ready at {url}  (store {cfg.store}, base {cfg.base_model})", flush=True)
        if admin_key:
            print(
                "no API keys configured: an admin key for this run (any tenant via header X-CNS-Tenant):\n"
                f"  {admin_key}\n"
                f"  cns generate --url {url} --api-key {admin_key} --tenant demo \"a photo of a dog\" -o out.png\n"
                "For tenant keys: `cns keys add --keys-file keys.json --tenant T`, then `cns serve --keys-file keys.json`.\n"
                "For a fixed admin key: CNS_ADMIN_KEY=<key> cns serve (see cns serve --help).",
                flush=True,
            )
        print("Ctrl-C or SIGTERM to stop.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping: draining in-flight requests", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one drain at a time
        try:
            if ray.is_initialized():
                _drain(APP_NAME, args.drain_timeout)
                if attached:
                    serve.delete(APP_NAME)  # leave the cluster's other Serve apps alone
                else:
                    serve.shutdown()
        finally:
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

    from cns_ray.models.defaults import base_defaults
    from cns_ray.serve.config import ServingConfig
    from cns_ray.serve.generator import GeneratorCore
    from cns_ray.serve.limits import ImageRequest, Limits, build_generation

    cfg = ServingConfig(store=args.store, base_model=args.base_model, max_steps=max(100, args.steps), max_n=max(4, args.n),
                        default_guidance=base_defaults(args.base_model).guidance_scale, torch_threads=args.torch_threads)
    core = GeneratorCore(cfg)
    # The operator's limits do not bind a local run: only the shape checks (sizes, n >= 1, steps >= 1) apply.
    limits = Limits.for_base(cfg, core.base.resolution)
    limits = Limits(**{**limits.__dict__, "max_side": 1 << 16, "max_cost": 1 << 62})
    body = ImageRequest(prompt=args.prompt, n=args.n, size=args.size, seed=args.seed, steps=args.steps, guidance_scale=args.guidance)
    reply = asyncio.run(core.generate(core.new_slot(args.tenant), build_generation(body, limits)))
    if not reply.ok:
        print(f"error: {reply.message}", file=sys.stderr)
        sys.exit(2)
    return reply.images, reply.seed, reply.version
