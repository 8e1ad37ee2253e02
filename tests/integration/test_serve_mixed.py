"""The Serve app in ``batch_mode="mixed"`` over real HTTP on 127.0.0.1: requests of different tenants share pipeline
calls, each gets the image it gets alone (up to the UNet's batch-size rounding: a pixel level or two), a broken
tenant fails only its own requests, and the shared base weights are never written."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import io

import numpy as np
import pytest
from PIL import Image

from conftest import free_port
from serve_states import random_state

pytestmark = pytest.mark.slow

TENANTS = ("m1", "m2", "m3")
FAULT = "__FAIL_HERE__"


def key(t: str) -> str:
    return f"key-{t}"


@pytest.fixture(scope="module")
def app(ray_local, tiny_base, tmp_path_factory):
    import httpx
    from ray import serve

    from cns_ray.config import StoreConfig
    from cns_ray.serve.app import build_app
    from cns_ray.serve.auth import hash_key
    from cns_ray.serve.config import ServingConfig
    from cns_ray.store import ConceptStore

    root = str(tmp_path_factory.mktemp("serve-mixed-store"))
    store = ConceptStore(StoreConfig(uri=root))
    for i, t in enumerate(TENANTS):
        store.commit(t, random_state(tiny_base, t, seed=30 + i, tokens=(f"<{t}>",), density=0.02, scale=0.3), parent=None)
    store.commit("foreign", random_state(tiny_base, "foreign", 40, base_id="0123456789abcdef"), parent=None)
    cfg = ServingConfig(
        store=root, torch_threads=1, num_cpus=0.5, default_steps=2, max_steps=999, max_request_cost=999 * 32 * 32, max_n=2,
        read_env_keys=False,
        api_keys={hash_key(key(t)): t for t in (*TENANTS, "foreign", "fresh")}, fault_marker=FAULT,
        admin_key_sha256=hash_key("mixed-admin"), batch_mode="mixed", max_batch_size=8, batch_wait_timeout_s=0.01, max_in_flight_per_tenant=8,
    )
    serve.shutdown()  # a Serve left by another module keeps its HTTP port: start ours fresh
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(cfg), name="cns-mixed", route_prefix="/")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=180)
    yield {"client": client, "gen": serve.get_deployment_handle("Generator", app_name="cns-mixed"), "port": port}
    client.close()
    serve.shutdown()


def post(client, tenant, prompt, seed=1, **extra):
    body = {"prompt": prompt, "seed": seed, "steps": 2, **extra}
    return client.post("/v1/images/generations", json=body, headers={"Authorization": f"Bearer {key(tenant)}"})


def pixels(resp) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    png = base64.b64decode(resp.json()["data"][0]["b64_json"])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def test_mixed_tenants_share_calls_and_match_alone(app, tiny_base):
    from cns_ray.serve.swap import weights_digest

    client, gen = app["client"], app["gen"]
    before = gen.weights_digest.remote().result()
    assert before == weights_digest(tiny_base)
    combos = [(t, f"a large <{t}> shape at the center on a {bg} background", s)
              for t in (*TENANTS, "fresh") for bg in ("grey", "white") for s in (1, 2)]
    alone = {c: pixels(post(client, *c)) for c in combos}  # one at a time: batches of one
    calls_alone = gen.stats.remote().result()["batches"]
    assert len({a.tobytes() for a in alone.values()}) == len(combos)  # tenants, prompts and seeds all matter

    jobs = [combos[(i * 7) % len(combos)] for i in range(2 * len(combos))]  # interleaved tenants
    jobs += [("foreign", "a <x> shape", i) for i in range(4)]  # refused at load: fails alone, not its batch-mates
    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda c: (c, post(client, *c)), jobs))
    for c, r in results:
        if c[0] == "foreign":
            assert r.status_code == 503 and "0123456789abcdef" in r.text, r.text
            continue
        diff = np.abs(pixels(r) - alone[c])
        assert diff.max() <= 3 and diff.mean() < 0.1, (c, int(diff.max()), float(diff.mean()))
    stats = gen.stats.remote().result()
    calls = stats["batches"] - calls_alone
    assert calls <= len(jobs) / 2, calls  # requests of different tenants shared pipeline calls (8 in flight)
    assert gen.weights_digest.remote().result() == before  # nothing was ever written


def test_at_twice_max_batch_size_in_flight_calls_hold_half_of_it_or_more(app):
    """What waits behind the running call goes into the next one (cns_ray/serve/coalesce.py): with 16 in flight and
    max_batch_size 8, calls hold far more than Serve's batcher alone gave (2.9 per call in this test without the coalescer),
    and never more than max_batch_size. (Whether some call is exactly full depends on how fast the HTTP proxy hands
    requests over on a loaded 2-core machine: a CI run of 2026-12-03 saw none at 8 with the mean above 4; the sizes
    a load gives, full calls included, are measured by benchmarks/bench_batch.py, not asserted.)"""
    client, gen = app["client"], app["gen"]
    jobs = [(t, f"a small <{t}> shape at the left on a grey background", s) for s in range(8) for t in (*TENANTS, "fresh")]
    before = gen.stats.remote().result()
    with cf.ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda c: post(client, *c, steps=6).status_code, jobs))
    after = gen.stats.remote().result()
    assert codes == [200] * len(jobs)
    calls = after["batches"] - before["batches"]
    sizes = {int(k): v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()}
    assert len(jobs) / calls >= 4, (calls, sizes)  # mean requests per call >= half of max_batch_size
    assert max(k for k, v in sizes.items() if v) <= 8, sizes


def test_metrics_show_mixed_batch_sizes(app):
    text = app["client"].get("/metrics", headers={"Authorization": "Bearer mixed-admin"}).text
    sizes = {int(ln.split('size="')[1].split('"')[0]): float(ln.split()[-1]) for ln in text.splitlines()
             if ln.startswith("cns_batch_size_total{")}
    assert sizes and max(sizes) > 1, sizes  # the concurrent load above shared pipeline calls


def test_an_abandoned_request_stops_in_the_denoising_loop(app):
    """Mixed mode: the client goes away mid-generation; its call stops, and the next request is served."""
    import json
    import socket
    import time

    gen = app["gen"]
    before = gen.stats.remote().result()
    body = json.dumps({"prompt": "a <m1> shape", "steps": 999, "seed": 1}).encode()
    s = socket.create_connection(("127.0.0.1", app["port"]), timeout=60)
    s.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Authorization: Bearer " + key("m1").encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    for _ in range(600):  # bounded: until the generator runs it
        if gen.stats.remote().result()["steps"] > before["steps"]:
            break
        time.sleep(0.1)
    s.close()
    for _ in range(600):
        if gen.stats.remote().result()["cancelled"] > before["cancelled"]:
            break
        time.sleep(0.1)
    assert post(app["client"], "m2", "a <m2> shape", 1).status_code == 200
    after = gen.stats.remote().result()
    assert after["cancelled"] == before["cancelled"] + 1 and after["ok"] == before["ok"] + 1
    assert after["steps"] - before["steps"] < 999


def test_a_failing_call_fails_its_requests_and_leaves_the_replica_clean(app):
    client, gen = app["client"], app["gen"]
    before = gen.weights_digest.remote().result()
    ok_before = pixels(post(client, "m1", "a small <m1> shape at the left on a black background", 4))
    r = post(client, "m2", f"{FAULT} <m2>", 1)
    assert r.status_code == 500 and "injected fault" in r.text
    assert gen.weights_digest.remote().result() == before
    again = pixels(post(client, "m1", "a small <m1> shape at the left on a black background", 4))
    assert np.array_equal(again, ok_before)  # no hook or delta left behind


def test_batch_mode_is_validated():
    from cns_ray.errors import ConfigError
    from cns_ray.serve.config import ServingConfig

    with pytest.raises(ConfigError, match="batch_mode='fused' must be 'swap' or 'mixed'"):
        ServingConfig(batch_mode="fused")
    with pytest.raises(ConfigError, match="max_batch_size=0"):
        ServingConfig(max_batch_size=0)
