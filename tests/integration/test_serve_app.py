"""The Serve app over real HTTP on 127.0.0.1: invariants 1-5, refresh, bad requests, concept routes.

One app for the module on the default base model ``tiny`` (tenants' states are built directly, never trained).
Images are its native 32x32 (requests give no size unless a test is about sizes) with 2 steps.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import uuid

import numpy as np
import pytest
import torch

from conftest import free_port
from serve_states import random_state

pytestmark = pytest.mark.slow

TENANTS = ("t1", "t2", "t3", "t4")
FAULT = "__FAIL_HERE__"
ADMIN = "admin-key"
NATIVE = 32  # the default base model's resolution: the served size when a request gives none


def key(t: str) -> str:
    return f"key-{t}"


@pytest.fixture(scope="module")
def app(ray_local, tiny_base, tmp_path_factory):
    """Store with tenants t1-t4 (token <tN>), 'foreign' (another base), 'broken' (corrupt delta), 'evo' and 'mgmt'."""
    import httpx
    from ray import serve

    from cns_ray.config import StoreConfig
    from cns_ray.serve.app import build_app
    from cns_ray.serve.auth import hash_key
    from cns_ray.serve.config import ServingConfig
    from cns_ray.store import ConceptStore

    assert tiny_base.resolution == NATIVE
    root = str(tmp_path_factory.mktemp("serve-store"))
    store = ConceptStore(StoreConfig(uri=root))
    for i, t in enumerate(TENANTS):
        store.commit(t, random_state(tiny_base, t, seed=10 + i, tokens=(f"<{t}>",)), parent=None)
    store.commit("foreign", random_state(tiny_base, "foreign", 20, base_id="0123456789abcdef"), parent=None)
    store.commit("broken", random_state(tiny_base, "broken", 21), parent=None)
    delta_path = f"{root}/tenants/broken/versions/1/delta.parquet"
    data = bytearray(open(delta_path, "rb").read())
    data[len(data) // 2 : len(data) // 2 + 16] = b"\xff" * 16
    open(delta_path, "wb").write(bytes(data))
    store.commit("evo", random_state(tiny_base, "evo", 22), parent=None)
    store.commit("mgmt", random_state(tiny_base, "mgmt", 23, tokens=("<cat1>", "<cat2>")), parent=None)

    tenants = (*TENANTS, "foreign", "broken", "evo", "mgmt", "learner", "purger")
    cfg = ServingConfig(
        store=root,
        torch_threads=1,
        num_cpus=0.5,
        refresh_ttl_s=1.0,
        default_steps=2,
        max_steps=8,
        max_n=2,
        max_size=128,
        max_prompt_chars=200,
        max_upload_bytes=200_000,
        learn_steps=1,
        api_keys={hash_key(key(t)): t for t in tenants},
        admin_key_sha256=hash_key(ADMIN),
        read_env_keys=False,
        fault_marker=FAULT,
        max_in_flight_per_tenant=8,  # the load test has 8 requests in flight
        scheduler_name=f"sched-{uuid.uuid4().hex[:8]}",
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(cfg), name="cns", route_prefix="/")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=180)
    gen = serve.get_deployment_handle("Generator", app_name="cns")
    yield {"client": client, "store": store, "gen": gen, "cfg": cfg, "root": root}
    client.close()
    serve.delete("cns")
    try:
        ray_local.kill(ray_local.get_actor(cfg.scheduler_name, namespace=cfg.scheduler_namespace))
    except ValueError:  # never created
        pass


def post_gen(client, tenant, prompt, seed=1, **extra):
    body = {"prompt": prompt, "seed": seed, "steps": 2, **extra}  # no size: the base's native resolution
    return client.post("/v1/images/generations", json=body, headers={"Authorization": f"Bearer {key(tenant)}"})


def _pixels(png: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def image(resp) -> bytes:
    assert resp.status_code == 200, resp.text
    return base64.b64decode(resp.json()["data"][0]["b64_json"])


def test_mixed_load_matches_alone_and_base_weights_stay_bit_identical(app, tiny_base):
    """Invariants 1 and 2: 16 alone + 64 concurrent mixed (8 at a time) + 20 failing mid-generation = 100 requests."""
    from cns_ray.serve.swap import weights_digest

    client, gen = app["client"], app["gen"]
    before = gen.weights_digest.remote().result()
    assert before == weights_digest(tiny_base)  # the replica serves the same base as a fresh load
    combos = [(t, f"a photo of <{t}> dog {p}", s) for t in TENANTS for p in ("red", "on a hill") for s in (1, 2)]
    alone = {c: image(post_gen(client, *c)) for c in combos}
    assert len(set(alone.values())) == len(combos)  # tenants, prompts and seeds all change the image

    jobs = [c for c in combos for _ in range(4)]
    jobs += [(TENANTS[i % 4], f"{FAULT} <{TENANTS[i % 4]}>", i) for i in range(20)]
    jobs = [jobs[(i * 37) % len(jobs)] for i in range(len(jobs))]  # interleave tenants and failures
    assert len(set(jobs)) == 36 and len(jobs) == 84
    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda c: (c, post_gen(client, *c)), jobs))
    failed = 0
    for c, r in results:
        if FAULT in c[1]:
            failed += 1
            assert r.status_code == 500 and "injected fault" in r.json()["error"]["message"]
        elif app["cfg"].batch_mode == "swap":
            assert image(r) == alone[c], c
        else:  # mixed batches: the UNet's batch-size rounding (test_serve_mixed.py); alone = a batch of one
            diff = np.abs(_pixels(image(r)) - _pixels(alone[c]))
            assert diff.max() <= 3 and diff.mean() < 0.1, (c, int(diff.max()), float(diff.mean()))
    assert failed == 20
    assert gen.weights_digest.remote().result() == before
    assert client.get("/healthz").json()["status"] == "ok"


def test_other_tenants_placeholder_is_plain_text(app, tiny_base):
    """Invariant 5 (prompts): <t2> in t1's prompt is literal text: same image as diffusers' own tokenization."""
    from cns_ray.delta import swapped
    from cns_ray.serve.swap import png_bytes

    prompt = "a photo of <t2> dog"
    got = image(post_gen(app["client"], "t1", prompt, seed=5))
    state = app["store"].load("t1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with swapped(tiny_base.target_weights(), state.delta, tiny_base.base_id):
            want = tiny_base.pipeline(
                prompt, num_inference_steps=2, height=NATIVE, width=NATIVE, guidance_scale=7.5,
                generator=torch.Generator().manual_seed(5),
            ).images[0]
    finally:
        torch.set_num_threads(threads)
    assert got == png_bytes(want)
    assert got != image(post_gen(app["client"], "t2", prompt, seed=5))


def test_tenant_isolation_and_auth(app):
    """Invariant 5: no key / bad key -> 401; t1's key cannot list, use, roll back or delete t2's concepts."""
    c, store = app["client"], app["store"]
    assert c.get("/v1/concepts").status_code == 401
    r = c.get("/v1/concepts", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["message"] == "invalid API key"
    h1 = {"Authorization": f"Bearer {key('t1')}"}
    listed = c.get("/v1/concepts", headers=h1)
    assert listed.status_code == 200, listed.text
    listed = listed.json()
    assert [x["name"] for x in listed["concepts"]] == ["t1"] and listed["tenant"] == "t1"
    assert c.get("/v1/concepts/t2", headers=h1).status_code == 404
    assert c.get("/v1/concepts", headers={**h1, "X-CNS-Tenant": "t2"}).status_code == 403
    assert post_gen(c, "t1", "x", **{}).status_code == 200
    r = c.post("/v1/images/generations", json={"prompt": "x"}, headers={**h1, "X-CNS-Tenant": "t2"})
    assert r.status_code == 403
    assert c.post("/v1/concepts/rollback", json={"version": 1}, headers={**h1, "X-CNS-Tenant": "t2"}).status_code == 403
    assert c.delete("/v1/concepts/t2", headers=h1).status_code == 404
    assert c.delete("/v1/concepts/t2", headers={**h1, "X-CNS-Tenant": "t2"}).status_code == 403
    assert store.head("t2") == 1 and [x.name for x in store.load("t2").concepts] == ["t2"]
    admin = c.get("/v1/concepts", headers={"Authorization": f"Bearer {ADMIN}", "X-CNS-Tenant": "t2"})
    assert [x["name"] for x in admin.json()["concepts"]] == ["t2"]


def test_foreign_base_and_corrupt_delta_refused_for_that_tenant_only(app):
    """Invariants 3/4: a clear 503 naming the tenant and the problem; other tenants keep being served."""
    c = app["client"]
    r = post_gen(c, "foreign", "a dog")
    assert r.status_code == 503
    msg = r.json()["error"]["message"]
    assert "'foreign'" in msg and "another base model" in msg and r.json()["error"]["type"] == "tenant_unavailable"
    r = post_gen(c, "broken", "a dog")
    assert r.status_code == 503
    msg = r.json()["error"]["message"]
    assert "'broken'" in msg and "corrupt" in msg and "roll back" in msg
    assert post_gen(c, "t3", "a photo of <t3> dog").status_code == 200
    assert app["gen"].weights_digest.remote().result() == app["gen"].weights_digest.remote().result()


def test_new_version_is_served_after_the_refresh_window(app, tiny_base):
    import time

    c, store = app["client"], app["store"]
    first = post_gen(c, "evo", "a photo of <tok> dog", seed=3)
    assert first.headers["X-CNS-Version"] == "1"
    store.commit("evo", random_state(tiny_base, "evo", 99), parent=1)
    time.sleep(app["cfg"].refresh_ttl_s + 0.5)
    second = post_gen(c, "evo", "a photo of <tok> dog", seed=3)
    assert second.headers["X-CNS-Version"] == "2"
    assert image(second) != image(first)


@pytest.mark.parametrize(
    "kwargs,status,fragment",
    [
        ({"json": {"prompt": "x" * 201}}, 422, "limit is 200"),
        ({"json": {"prompt": "x", "n": 5}}, 422, "n=5 must be in [1, 2]"),
        ({"json": {"prompt": "x", "steps": -3}}, 422, "steps=-3"),
        ({"json": {"prompt": "x", "size": "63x64"}}, 422, "multiple of 8"),
        ({"json": {"n": 1}}, 422, "prompt"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ],
)
def test_bad_requests_get_clear_errors(app, kwargs, status, fragment):
    c = app["client"]
    headers = {"Authorization": f"Bearer {key('t4')}", **kwargs.pop("headers", {})}
    r = c.post("/v1/images/generations", headers=headers, **kwargs)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]["message"]
    assert c.get("/healthz").status_code == 200


def test_concept_management_routes(app):
    c, h = app["client"], {"Authorization": f"Bearer {key('mgmt')}"}
    shown = c.get("/v1/concepts/cat1", headers=h).json()
    assert shown["token"] == "<cat1>" and shown["version"] == 1
    r = c.get("/v1/concepts/nope", headers=h)
    assert r.status_code == 404 and "no concept 'nope'" in r.json()["error"]["message"]
    assert c.get("/v1/concepts/..%2Fx", headers=h).status_code in (404, 422)
    d = c.delete("/v1/concepts/cat1", headers=h)
    assert d.status_code == 200 and d.json()["version"] == 2
    assert [x["name"] for x in c.get("/v1/concepts", headers=h).json()["concepts"]] == ["cat2"]
    hist = c.get("/v1/concepts/history", headers=h).json()["versions"]
    assert [v["version"] for v in hist] == [1, 2] and hist[-1]["is_head"]
    assert c.post("/v1/concepts/rollback", json={"version": 7}, headers=h).status_code == 404
    r = c.post("/v1/concepts/rollback", json={"version": 1}, headers=h)
    assert r.status_code == 200 and r.json()["head"] == 1
    assert [x["name"] for x in c.get("/v1/concepts", headers=h).json()["concepts"]] == ["cat1", "cat2"]
    gen = post_gen(c, "mgmt", "a <cat1> and a <cat2>")
    assert gen.headers["X-CNS-Version"] == "1"  # rollback reloaded the replica at once
    png = c.post("/v1/images/generations", json={"prompt": "a <cat2>", "response_format": "png"}, headers=h)
    assert png.headers["content-type"] == "image/png" and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert _size(png.content) == (NATIVE, NATIVE)  # no size given: the base's native resolution
    wide = c.post("/v1/images/generations", json={"prompt": "a <cat2>", "size": "64x32", "steps": 1, "response_format": "png"}, headers=h)
    assert wide.status_code == 200, wide.text
    assert _size(wide.content) == (64, 32)  # WIDTHxHEIGHT as asked
    assert c.get("/metrics").status_code == 401 and c.get("/metrics", headers=h).status_code == 403  # admin only
    assert "cns_requests_total" in c.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text


def test_cns_generate_over_http_writes_the_same_image(app, tmp_path):
    from cns_ray.cli import main

    url = str(app["client"].base_url)
    out = tmp_path / "img.png"
    rc = main(["generate", "--url", url, "--api-key", key("t1"), "--tenant", "t1", "a photo of <t1> dog red",
               "--size", f"{NATIVE}x{NATIVE}", "--steps", "2", "--seed", "1", "-o", str(out)])
    assert rc == 0
    # the same bytes as a request without a size: the default is the base's native resolution
    assert out.read_bytes() == image(post_gen(app["client"], "t1", "a photo of <t1> dog red", seed=1))


def _size(png: bytes) -> tuple[int, int]:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return im.size


def _png(seed: int) -> bytes:
    import io

    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(64, 64, 3, generator=g) * 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_learn_route_submits_a_job_the_tenant_alone_can_see(app):
    """POST /v1/concepts -> job id; GET /v1/jobs/{id} for its tenant only; the learned concept is then served."""
    c = app["client"]
    h = {"Authorization": f"Bearer {key('learner')}"}
    form = {"concept": "pup", "class_word": "dog", "steps": "1"}
    bad = c.post("/v1/concepts", data=form, files=[("images", ("a.png", b"not an image", "image/png"))], headers=h)
    assert bad.status_code == 422 and "'a.png' is not a readable image" in bad.json()["error"]["message"]
    big = c.post("/v1/concepts", data=form, files=[("images", ("a.png", b"0" * 300_000, "image/png"))], headers=h)
    assert big.status_code == 413
    files = [("images", (f"{i}.png", _png(i), "image/png")) for i in range(2)]
    r = c.post("/v1/concepts", data=form, files=files, headers=h)
    assert r.status_code == 202, r.text
    job = r.json()["job_id"]
    assert c.get(f"/v1/jobs/{job}", headers={"Authorization": f"Bearer {key('t1')}"}).status_code == 404
    st = _wait_job(c, h, job, limit_s=240)
    assert st["tenant"] == "learner" and st["state"] == "succeeded", st
    assert [x["name"] for x in c.get("/v1/concepts", headers=h).json()["concepts"]] == ["pup"]
    gen = post_gen(c, "learner", "a photo of <pup> dog")
    assert gen.status_code == 200 and gen.headers["X-CNS-Version"] == "1"


def _wait_job(c, h, job, limit_s=300):
    import time

    deadline = time.monotonic() + limit_s
    while True:
        st = c.get(f"/v1/jobs/{job}", headers=h)
        assert st.status_code == 200, st.text
        if st.json()["state"] in ("succeeded", "failed") or time.monotonic() > deadline:
            return st.json()
        time.sleep(1)


def test_purge_route_erases_a_concept_as_a_job_of_the_tenants_queue(app):
    """POST /v1/concepts/{name}/purge: refused at once for an unknown concept; otherwise queued behind the tenant's
    learning jobs (submitted while the second concept is still queued), then the state is rebuilt without it and no
    kept version holds it; other tenants cannot see the job."""
    c = app["client"]
    h = {"Authorization": f"Bearer {key('purger')}"}
    files = lambda k: [("images", (f"{i}.png", _png(10 * k + i), "image/png")) for i in range(2)]  # noqa: E731
    assert c.post("/v1/concepts/nope/purge", headers=h).status_code == 404  # nothing learned yet: nothing queued
    first = c.post("/v1/concepts", data={"concept": "pa", "class_word": "dog", "steps": "1"}, files=files(1), headers=h)
    assert first.status_code == 202, first.text
    assert _wait_job(c, h, first.json()["job_id"])["state"] == "succeeded"
    second = c.post("/v1/concepts", data={"concept": "pb", "class_word": "cat", "steps": "1"}, files=files(2), headers=h)
    assert second.status_code == 202, second.text
    r = c.post("/v1/concepts/pa/purge", headers=h)
    assert r.status_code == 202 and r.json()["kind"] == "purge", r.text
    job = r.json()["job_id"]
    assert c.get(f"/v1/jobs/{job}", headers={"Authorization": f"Bearer {key('t1')}"}).status_code == 404
    st = _wait_job(c, h, job)
    learned = _wait_job(c, h, second.json()["job_id"])
    assert learned["state"] == "succeeded" and learned["seq"] < st["seq"]
    assert st["state"] == "succeeded", st
    assert st["detail"]["replayed"] == ["pb"] and st["version"] > learned["version"]
    assert [x["name"] for x in c.get("/v1/concepts", headers=h).json()["concepts"]] == ["pb"]
    history = c.get("/v1/concepts/history", headers=h)
    assert history.status_code == 200, history.text
    assert all("pa" not in v["concepts"] for v in history.json()["versions"]), history.json()


def test_every_listener_of_the_app_is_loopback(app):
    """Serve replicas start an internal gRPC server on all interfaces by default; ours stay on 127.0.0.1."""
    import psutil

    assert app["client"].get("/healthz").status_code == 200
    me = psutil.Process()
    listening: dict[str, set[str]] = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            name = " ".join(p.cmdline())[:60]
            ips = {c.laddr.ip for c in p.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
        except (psutil.Error, OSError):
            continue
        if ips:
            listening[name] = ips
    replicas = [n for n in listening if "ServeReplica:cns:" in n]
    assert len(replicas) >= 2, listening  # the ingress and the generator
    loopback = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
    exposed = {n: ips - loopback for n, ips in listening.items() if ips - loopback}
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_export_route_gives_the_tenants_own_version_as_a_zip(app, tmp_path):
    import io
    import zipfile

    from cns_ray.store import load_export

    c = app["client"]
    r = c.get("/v1/concepts/export", headers={"Authorization": f"Bearer {key('t1')}"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        assert {"manifest.json", "delta.parquet", "tokens.parquet", "concepts.parquet"} <= set(z.namelist())
        z.extractall(tmp_path)
    exported = load_export(str(tmp_path))  # checksums and contents checked
    head = app["store"].load("t1")
    assert exported.tenant == "t1" and exported.version == head.version
    assert exported.tokens.keys() == head.tokens.keys()
    missing = c.get("/v1/concepts/export", params={"version": 999}, headers={"Authorization": f"Bearer {key('t1')}"})
    assert missing.status_code == 404 and "999" in missing.json()["error"]["message"]
    assert c.get("/v1/concepts/export").status_code == 401
