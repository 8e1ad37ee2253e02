"""The Serve app over real HTTP on 127.0.0.1, probed as an adversary would (issue 12): limits that follow the base,
half-sent and oversized bodies, uploads, abandoned requests, the per-tenant cap, one JSON error shape, strict
bodies, reload that re-validates, no server paths, keys-file reload, metrics, and a replica killed mid-request.

One app for the module (swap mode, the default base ``tiny``: 32 px native). Loops are bounded; nothing is timed.
The replica-kill test runs last.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import uuid

import pytest

from conftest import free_port
from serve_states import random_state

pytestmark = pytest.mark.slow

NATIVE = 32
ADMIN = "adv-admin-key"
LONG = 999  # denoising steps of a request that would hold the worker for a long time


def key(t: str) -> str:
    return f"key-{t}"


def auth(t: str) -> dict:
    return {"Authorization": f"Bearer {key(t)}"}


@pytest.fixture(scope="module")
def app(ray_local, tiny_base, tmp_path_factory):
    import httpx
    from ray import serve

    from cns_ray.config import StoreConfig
    from cns_ray.serve.app import build_app
    from cns_ray.serve.auth import hash_key
    from cns_ray.serve.config import ServingConfig
    from cns_ray.store import ConceptStore

    root = str(tmp_path_factory.mktemp("adv-store"))
    store = ConceptStore(StoreConfig(uri=root))
    for i, t in enumerate(("a1", "b1", "rel", "exp")):
        store.commit(t, random_state(tiny_base, t, seed=50 + i), parent=None)
    keys_file = tmp_path_factory.mktemp("adv-keys") / "keys.json"
    keys_file.write_text(json.dumps({hash_key(key("kf")): "kf"}))
    tenants = ("a1", "b1", "c1", "rel", "exp", "up", "gen")
    cfg = ServingConfig(
        store=root, torch_threads=1, num_cpus=0.5, refresh_ttl_s=3600.0, default_steps=2, default_guidance=4.0,
        max_steps=2000, max_n=2, max_request_cost=LONG * NATIVE * NATIVE, max_in_flight_per_tenant=2,
        body_timeout_s=2.0, max_upload_bytes=200_000, max_upload_pixels=256 * 256, learn_steps=1,
        keys_file=str(keys_file), api_keys={hash_key(key(t)): t for t in tenants}, read_env_keys=False,
        admin_key_sha256=hash_key(ADMIN),
        scheduler_name=f"sched-{uuid.uuid4().hex[:8]}",
    )
    serve.shutdown()  # a Serve left by another module keeps its HTTP port: start ours fresh
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(cfg), name="cns-adv", route_prefix="/")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    gen = serve.get_deployment_handle("Generator", app_name="cns-adv")
    yield {"client": client, "store": store, "root": root, "port": port, "gen": gen, "keys_file": keys_file, "cfg": cfg}
    client.close()
    serve.shutdown()


def post_gen(client, tenant, prompt="a photo of <tok> dog", **extra):
    return client.post("/v1/images/generations", json={"prompt": prompt, "seed": 1, **extra}, headers=auth(tenant))


def shape(r, status: int, etype: str | None = None) -> str:
    """The documented error body, a request id header; returns the message."""
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type"}, body
    if etype:
        assert body["error"]["type"] == etype, body
    assert r.headers.get("x-request-id")
    return body["error"]["message"]


def raw(port: int, head: bytes, body: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(head + body)
    return s


def read_status(s: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(ln.split(b":")[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, head + b"\r\n\r\n" + body


def gen_stats(app) -> dict:
    return app["gen"].stats.remote().result()


def wait_until(cond, what: str, tries: int = 600):
    for _ in range(tries):  # bounded polling, 0.1 s apart
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


# ------------------------------------------------------------------------------------------------ availability
def test_limits_follow_the_served_base(app):
    c = app["client"]
    lim = c.get("/v1/limits", headers=auth("gen")).json()
    assert lim["native_size"] == NATIVE and lim["max_side"] == 2 * NATIVE
    msg = shape(post_gen(c, "gen", size="1024x1024", n=2, steps=100), 422, "invalid_request")
    assert f"[8, {2 * NATIVE}]" in msg
    assert str(LONG) in shape(post_gen(c, "gen", steps=LONG + 1), 422, "invalid_request")  # the sampler's own limit
    msg = shape(post_gen(c, "gen", size="64x64", n=2, steps=LONG), 422, "invalid_request")
    assert "n*steps*height*width" in msg and str(LONG * NATIVE * NATIVE) in msg
    assert post_gen(c, "gen", size="64x64", steps=1).status_code == 200


def test_half_sent_bodies_without_a_key_do_not_take_the_endpoint_down(app):
    """80 POSTs that promise a 1 MB body and send 10 bytes, with no key: each is refused at once (401, JSON), and
    while they all stay open /healthz and other tenants are served. (The ingress has 64 request slots.)"""
    port, c = app["port"], app["client"]
    head = (b"POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000\r\n\r\n")
    socks = [raw(port, head, b'{"prompt":') for _ in range(80)]
    try:
        statuses = [read_status(s) for s in socks]
        assert all(st == 401 and b"application/json" in data for st, data in statuses), statuses[:3]
        assert c.get("/healthz").status_code == 200
        assert post_gen(c, "b1", steps=1).status_code == 200
    finally:
        for s in socks:
            s.close()


def test_a_slow_body_times_out_and_frees_its_slot(app):
    port = app["port"]
    head = (b"POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + key("gen").encode() + b"\r\nContent-Length: 100\r\n\r\n")
    s = raw(port, head, b'{"prompt": "a')
    try:
        status, data = read_status(s)  # answered after body_timeout_s, without the rest of the body
        assert status == 408 and b"request_timeout" in data
    finally:
        s.close()
    assert app["client"].get("/healthz").status_code == 200


def test_uploads_are_checked_before_and_while_they_stream(app):
    port, c = app["port"], app["client"]
    head = (b"POST /v1/concepts HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            b"Content-Length: 1073741824\r\n")
    s = raw(port, head + b"\r\n", b"--x\r\n")  # 1 GiB promised, no key: 401 before any of it is read
    try:
        assert read_status(s)[0] == 401
    finally:
        s.close()
    s = raw(port, head + b"Authorization: Bearer " + key("up").encode() + b"\r\n\r\n", b"--x\r\n")
    try:
        status, data = read_status(s)  # with a key: 413 from Content-Length alone
        assert status == 413
    finally:
        s.close()
    # no Content-Length (chunked): the size is enforced while it streams
    s = raw(port, b"POST /v1/concepts HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            b"Authorization: Bearer " + key("up").encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    try:
        part = (b'--x\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n'
                b"Content-Type: image/png\r\n\r\n")
        s.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        chunk = b"%x\r\n%s\r\n" % (65536, b"0" * 65536)
        for _ in range(8):  # 512 KiB > 200 kB + framing
            try:
                s.sendall(chunk)
            except OSError:  # the server answered and closed
                break
        assert read_status(s)[0] == 413
    finally:
        s.close()
    # a decompression bomb: a small PNG of many pixels is refused from its header, JSON, never decoded
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (2048, 2048)).save(buf, format="PNG")
    assert len(buf.getvalue()) < 50_000
    r = c.post("/v1/concepts", data={"concept": "bomb", "class_word": "dog"}, files=[("images", ("b.png", buf.getvalue(), "image/png"))],
               headers=auth("up"))
    msg = shape(r, 413, "image_too_large")
    assert "2048x2048" in msg and str(256 * 256) in msg


def test_abandoned_requests_are_cancelled_and_one_tenant_cannot_fill_the_endpoint(app):
    """a1 starts two long requests (its cap is 2): a third gets 429 + Retry-After. The client then goes away: both
    stop in the denoising loop, the worker is free, and b1 is served next; a1's never completed."""
    port, c = app["port"], app["client"]
    before = gen_stats(app)
    body = json.dumps({"prompt": "a photo of <tok> dog", "steps": LONG, "seed": 3}).encode()
    head = (b"POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + key("a1").encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body))
    socks = [raw(port, head, body) for _ in range(2)]
    try:
        wait_until(lambda: gen_stats(app)["requests"] >= before["requests"] + 2, "both requests reached the generator")
        r = post_gen(c, "a1", steps=1)
        shape(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1
    finally:
        for s in socks:
            s.close()  # the client goes away
    wait_until(lambda: gen_stats(app)["cancelled"] >= before["cancelled"] + 2, "both requests cancelled")
    assert post_gen(c, "b1", steps=1).status_code == 200
    after = gen_stats(app)
    assert after["ok"] == before["ok"] + 1  # only b1's: a1's two never finished
    assert after["steps"] - before["steps"] < 2 * LONG  # they stopped in the denoising loop
    assert app["gen"].weights_digest.remote().result() == app["gen"].weights_digest.remote().result()


# ------------------------------------------------------------------------------------------------ the boundary
@pytest.mark.parametrize(
    "method,path,kw,status,etype",
    [
        ("GET", "/v1/nope", {}, 404, "not_found"),
        ("PUT", "/v1/concepts/rollback", {}, 405, "method_not_allowed"),
        ("POST", "/v1/images/generations", {"content": b"{bad", "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
        ("POST", "/v1/images/generations", {"content": b'{"prompt": "\xff\xfe"}', "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
        ("POST", "/v1/images/generations", {"json": {"prompt": "x", "n": "2"}}, 422, "invalid_request"),
        ("POST", "/v1/images/generations", {"content": b'{"prompt": "a \\ud800 dog"}', "headers": {"content-type": "application/json"}}, 422, "invalid_request"),
        ("POST", "/v1/concepts/rollback", {"json": {"version": True}}, 422, "invalid_request"),
        ("POST", "/v1/concepts/rollback", {"json": {"version": "1"}}, 422, "invalid_request"),
        ("POST", "/v1/concepts/rollback", {"json": {"version": 1.0}}, 422, "invalid_request"),
        ("GET", "/v1/concepts/acme%0A", {}, 422, "invalid_name"),
        ("POST", "/v1/images/generations", {"json": {"prompt": "a " * 80 + "<tok> dog"}}, 422, "invalid_request"),  # past the window (tiny: 48 tokens)
    ],
)
def test_every_error_is_json_of_one_shape(app, method, path, kw, status, etype):
    c = app["client"]
    headers = {**auth("rel"), **kw.pop("headers", {})}
    msg = shape(c.request(method, path, headers=headers, **kw), status, etype)
    if "<tok> dog" in str(kw.get("json", "")):
        assert "<tok>" in msg and "reads 46" in msg  # names the cut token and the text encoder's window (tiny: 48 - 2)
    assert app["store"].head("rel") == 1  # nothing was rolled back by a non-integer version


def test_no_key_is_401_before_any_field_is_validated(app):
    c = app["client"]
    shape(c.post("/v1/images/generations", json={"n": "x"}), 401, "authentication_error")
    shape(c.post("/v1/concepts/rollback", content=b"\xff"), 401, "authentication_error")
    shape(c.get("/v1/nope"), 401, "authentication_error")


def test_keys_file_is_reread_when_it_changes(app):
    c, kf = app["client"], app["keys_file"]
    assert c.get("/v1/concepts", headers=auth("kf")).status_code == 200
    tmp = kf.with_name("keys.json.tmp")
    tmp.write_text("{}")
    tmp.replace(kf)
    shape(c.get("/v1/concepts", headers=auth("kf")), 401, "authentication_error")


def test_export_and_errors_hold_no_server_paths(app):
    import io
    import zipfile

    c, root = app["client"], app["root"]
    r = c.get("/v1/concepts/export", headers=auth("exp"))
    assert r.status_code == 200
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        manifest = z.read("manifest.json").decode()
    assert root not in manifest and "/tmp" not in manifest


def test_reload_revalidates_and_every_route_then_answers_the_same(app):
    """A head file corrupted under a cached state: reload re-reads it and refuses it; then generation, list and
    show all answer 503 tenant_unavailable, and no message holds the store's path."""
    c, root = app["client"], app["root"]
    assert post_gen(c, "rel", steps=1).status_code == 200  # cached on the replica
    path = f"{root}/tenants/rel/versions/1/delta.parquet"
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2 : len(data) // 2 + 16] = b"\xff" * 16
    open(path, "wb").write(bytes(data))
    msgs = [shape(c.post("/v1/concepts/reload", headers=auth("rel")), 503, "tenant_unavailable")]
    msgs.append(shape(post_gen(c, "rel", steps=1), 503, "tenant_unavailable"))
    msgs.append(shape(c.get("/v1/concepts", headers=auth("rel")), 503, "tenant_unavailable"))
    msgs.append(shape(c.get("/v1/concepts/rel", headers=auth("rel")), 503, "tenant_unavailable"))
    for m in msgs:
        assert root not in m and "/tmp/" not in m, m


def test_in_process_generate_gives_the_servers_bytes(app, tmp_path):
    import torch

    from cns_ray.cli import main

    c = app["client"]
    r = post_gen(c, "a1", "a photo of <tok> dog red", steps=2, guidance_scale=4.0, seed=7)
    assert r.status_code == 200, r.text
    served = base64.b64decode(r.json()["data"][0]["b64_json"])
    threads = torch.get_num_threads()
    try:
        rc = main(["generate", "--store", app["root"], "--tenant", "a1", "a photo of <tok> dog red", "--steps", "2",
                   "--guidance", "4", "--seed", "7", "--torch-threads", "1", "-o", str(tmp_path / "a.png")])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0 and (tmp_path / "a.png").read_bytes() == served


# ------------------------------------------------------------------------------------------------ operability
def test_metrics_cover_tenants_statuses_cache_and_cancellations(app):
    c = app["client"]
    assert post_gen(c, "b1", steps=1).status_code == 200
    shape(c.get("/metrics"), 401, "authentication_error")
    shape(c.get("/metrics", headers=auth("b1")), 403, "permission_denied")  # it names every tenant: admin only
    text = c.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
    assert 'cns_requests_total{route="/v1/images/generations",tenant="b1",status="200"}' in text
    assert 'status="401"' in text and 'status="429"' in text and 'status="422"' in text
    assert 'cns_request_seconds_bucket{route="/v1/images/generations",tenant="b1",le="+Inf"}' in text
    metric = {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in text.splitlines() if ln.startswith("cns_generator_") and "{" not in ln}
    assert metric["cns_generator_cancelled_total"] >= 2
    assert metric["cns_generator_cache_hits_total"] >= 1 and metric["cns_generator_cache_misses_total"] >= 1
    assert metric["cns_generator_tenant_loads_total"] >= 1 and metric["cns_generator_load_seconds_total"] > 0
    assert "cns_generator_queued" in text and "cns_in_flight" in text
    r = post_gen(c, "gen", size="4096x4096")
    assert r.headers["x-request-id"]


def test_a_killed_replica_is_a_json_503_with_retry_after(app):
    """Runs last: the generator replica dies mid-request."""
    import ray

    c = app["client"]
    before = gen_stats(app)
    result: dict = {}

    def long_request():
        result["r"] = post_gen(c, "c1", steps=LONG)

    t = threading.Thread(target=long_request)
    t.start()
    wait_until(lambda: gen_stats(app)["requests"] >= before["requests"] + 1, "the request reached the generator")
    names = [a for a in ray.util.list_named_actors(all_namespaces=True) if "cns-adv#Generator" in a["name"]]
    assert len(names) == 1, names
    ray.kill(ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]), no_restart=True)
    t.join(timeout=120)
    assert not t.is_alive()
    r = result["r"]
    shape(r, 503, "service_unavailable")
    assert int(r.headers["retry-after"]) >= 1
