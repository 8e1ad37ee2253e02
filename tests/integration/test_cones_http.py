"""Cones concepts through the whole system over HTTP, as a user runs it: ``cns serve`` as a process (its own local
Ray on 127.0.0.1), on S3 (moto's server over HTTP on 127.0.0.1): the store a cluster shares. Cones on the default
local store is covered in-process by tests/integration/test_cones_learn_ray.py and tests/unit/test_cones_cli.py.

Learn two Cones concepts with ``method=cones`` (HTTP learn route -> per-tenant scheduler -> Ray Train), list and
show them (method ``cones``), generate one concept and the two concatenated in one prompt (the served bytes equal
the in-process swap path's with the named neurons shut: one and the union), export, roll back, delete; the store
holds indices only for them (no delta entries, no embeddings, no value column), and the CLI sees what HTTP did
(history, rollback, show, in-process ``cns generate`` of the concatenated prompt with the same bytes, delete, verify).
Learning runs 2 score steps; images are the base's native 32 px with 2 denoising steps.
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import free_port

pytestmark = pytest.mark.slow

KEYS = {"acme": "k-acme-0123456789", "other": "k-other-0123456789"}
STEPS, GUIDANCE, SEED = 2, 4.0, 3


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


class Endpoint:
    """``cns serve`` in a subprocess; ``h(tenant)`` the tenant's auth header."""

    def __init__(self, store_uri: str, tmp_path):
        self.port = free_port()
        env = {**os.environ, "CNS_API_KEYS": ",".join(f"{k}:{t}" for t, k in KEYS.items()),
               "CNS_ADMIN_KEY": "cones-admin-key", "HF_HUB_OFFLINE": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
               "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
        env.pop("RAY_ADDRESS", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cns_ray.cli", "serve", "--store", store_uri, "--port", str(self.port),
             "--num-cpus", "0.5", "--refresh-ttl", "0.5"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        ready = threading.Event()

        def pump():
            for line in self.proc.stdout:  # type: ignore[union-attr]
                self.lines.append(line)
                if "endpoint ready" in line:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(300):
            self.close()
            raise AssertionError("cns serve never got ready:\n" + "".join(self.lines[-60:]))
        import httpx

        self.c = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=300)

    def log(self) -> str:
        return "".join(self.lines[-60:])

    def close(self) -> None:
        if getattr(self, "c", None) is not None:
            self.c.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def h(tenant: str) -> dict:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


def _learn(ep: Endpoint, name: str) -> str:
    from cns_ray.world import concepts as wc

    c = wc.get_concept(name)
    images, _, _ = wc.reference_set(c, 4, 0)
    files = [("images", (f"{i}.png", _png(img), "image/png")) for i, img in enumerate(images)]
    r = ep.c.post("/v1/concepts", data={"concept": name, "class_word": c.shape, "method": "cones", "steps": "2"},
                  files=files, headers=h("acme"))
    assert r.status_code == 202, r.text
    assert r.json()["method"] == "cones"
    return r.json()["job_id"]


def _wait(ep: Endpoint, job: str) -> dict:
    deadline = time.monotonic() + 400
    while True:
        st = ep.c.get(f"/v1/jobs/{job}", headers=h("acme"))
        assert st.status_code == 200, st.text
        if st.json()["state"] in ("succeeded", "failed") or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert st.json()["state"] == "succeeded", (st.json(), ep.log())
    return st.json()


def _gen(ep: Endpoint, prompt: str, want_version: int | None) -> bytes:
    """The image bytes of ``prompt`` for acme, once the replica serves ``want_version`` (bounded wait)."""
    body = {"prompt": prompt, "seed": SEED, "steps": STEPS, "guidance_scale": GUIDANCE}
    for _ in range(60):
        r = ep.c.post("/v1/images/generations", json=body, headers=h("acme"))
        assert r.status_code == 200, r.text
        if want_version is None or r.headers["X-CNS-Version"] == str(want_version):
            return base64.b64decode(r.json()["data"][0]["b64_json"])
        time.sleep(0.5)
    raise AssertionError(f"never served version {want_version}: last {r.headers['X-CNS-Version']}")


def _in_process(base, state, prompt: str) -> bytes:
    """The swap path in this process, with the server's torch thread count (1): the bytes serving must give."""
    from cns_ray.serve.swap import GenerationRequest, ServedTenant, generate_images

    served = ServedTenant.from_state(state, "cpu", torch.float32) if state is not None else ServedTenant.empty("acme", base.base_id)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return generate_images(base, base.target_weights(), served,
                               GenerationRequest(prompt=prompt, steps=STEPS, guidance_scale=GUIDANCE, seed=SEED))[0]
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def store_uri(s3_env):
    return f"s3://{s3_env}/cns"  # AWS_* point at moto; the server process inherits them


def test_cones_concepts_learned_served_concatenated_rolled_back_deleted_over_http(store_uri, tmp_path, tiny_base, capsys):
    import pyarrow.parquet as pq

    from cns_ray.cli import main
    from cns_ray.config import StoreConfig
    from cns_ray.store import ConceptStore
    from cns_ray.store.manifest import CONES_FILE
    from cns_ray.world import concepts as wc

    base = tiny_base
    store = ConceptStore(StoreConfig(uri=store_uri))
    ep = Endpoint(store_uri, tmp_path)
    try:
        jobs = [_learn(ep, "rex"), _learn(ep, "mia")]  # queued in order: mia learns on rex's committed version
        assert [_wait(ep, j)["version"] for j in jobs] == [1, 2]
        # the joint-refinement field (the CLI's --cones-joint A,B) is read and checked: one name is refused, no job
        bad = ep.c.post("/v1/concepts", data={"concept": "pair", "class_word": "pair", "method": "cones",
                                              "cones_joint": "rex"}, files=[("images", ("0.png", b"x", "image/png"))],
                        headers=h("acme"))
        assert bad.status_code == 422 and "cones_joint='rex'" in bad.text and "2 to 8" in bad.text, bad.text
        assert [j["concept"] for j in ep.c.get("/v1/jobs", headers=h("acme")).json()["jobs"]] == ["rex", "mia"]

        # list and show: both Cones, indices only
        listed = ep.c.get("/v1/concepts", headers=h("acme")).json()
        assert listed["version"] == 2
        assert [(x["name"], x["method"], x["token"]) for x in listed["concepts"]] == [
            ("rex", "cones", "<rex>"), ("mia", "cones", "<mia>")]
        assert all(x["nnz"] > 0 for x in listed["concepts"])
        shown = ep.c.get("/v1/concepts/mia", headers=h("acme")).json()
        assert shown["method"] == "cones" and shown["stats"]["steps"] == 2
        assert ep.c.get("/v1/concepts", headers=h("other")).json()["concepts"] == []  # isolation
        assert ep.c.get("/v1/concepts/rex", headers=h("other")).status_code == 404

        # the store: a version's Cones file holds indices, never values; no delta entries, no embeddings
        st2 = store.load("acme", 2, shapes=base.target_shapes(), base_id=base.base_id)
        assert st2.delta.nnz == 0 and st2.tokens == {}
        files = store.read_version_files("acme", store.version_entry("acme", 2))
        cols = pq.read_schema(io.BytesIO(files[CONES_FILE])).names
        assert not any("value" in c for c in cols), cols
        nnz = sum(c.nnz for c in st2.concepts)
        assert len(files[CONES_FILE]) < 1500 + 2.0 * nnz, (len(files[CONES_FILE]), nnz)

        # serving: one concept, two concatenated in one prompt; the bytes are the in-process swap path's
        single = wc.user_caption("large", "<rex>", "circle", "center", "grey")
        pair = wc.multi_prompts("seq1")[0][0]  # "a small <rex> circle at the left and a small <mia> square ..."
        assert "<rex>" in pair and "<mia>" in pair
        got_single, got_pair = _gen(ep, single, 2), _gen(ep, pair, 2)
        assert got_single == _in_process(base, st2, single)
        assert got_pair == _in_process(base, st2, pair)
        class_pair = wc.class_prompt(pair, ["<rex>", "<mia>"])
        assert got_pair != _gen(ep, class_pair, 2)  # shutting changed the image
        assert got_pair != _gen(ep, pair.replace("<mia> ", ""), 2)  # the union, not rex's set alone

        # export: the version's files, the index-only one included
        ex = ep.c.get("/v1/concepts/export", params={"version": 2}, headers=h("acme"))
        assert ex.status_code == 200
        assert any(n.endswith(CONES_FILE) for n in zipfile.ZipFile(io.BytesIO(ex.content)).namelist())

        # roll back to version 1: only rex; "<mia>" is plain text again
        rb = ep.c.post("/v1/concepts/rollback", json={"version": 1}, headers=h("acme"))
        assert rb.status_code == 200 and rb.json()["head"] == 1, rb.text
        assert [x["name"] for x in ep.c.get("/v1/concepts", headers=h("acme")).json()["concepts"]] == ["rex"]
        st1 = store.load("acme", 1, shapes=base.target_shapes(), base_id=base.base_id)
        assert _gen(ep, pair, 1) == _in_process(base, st1, pair) != got_pair

        # delete rex: a new version without concepts and without a Cones file; <rex> is plain text
        d = ep.c.delete("/v1/concepts/rex", headers=h("acme"))
        assert d.status_code == 200 and d.json()["version"] == 3, d.text
        assert ep.c.get("/v1/concepts", headers=h("acme")).json()["concepts"] == []
        assert CONES_FILE not in store.read_version_files("acme", store.version_entry("acme", 3))
        assert _gen(ep, single, 3) == _in_process(base, None, single) != got_single
    finally:
        ep.close()

    # the CLI sees what HTTP did (same store), and verify passes on every version
    capsys.readouterr()
    assert main(["concepts", "history", "--store", store_uri, "--tenant", "acme"]) == 0
    hist = capsys.readouterr().out
    assert all(str(v) in hist for v in (1, 2, 3))
    assert main(["concepts", "rollback", "--store", store_uri, "--tenant", "acme", "2"]) == 0
    capsys.readouterr()
    assert main(["concepts", "show", "--store", store_uri, "--tenant", "acme", "mia", "--json"]) == 0
    assert '"method": "cones"' in capsys.readouterr().out
    out = tmp_path / "pair.png"  # in-process `cns generate`: the server's bytes for the concatenated prompt
    assert main(["generate", "--store", store_uri, "--tenant", "acme", pair, "-o", str(out), "--steps", str(STEPS),
                 "--seed", str(SEED), "--guidance", str(GUIDANCE)]) == 0
    assert out.read_bytes() == got_pair
    assert main(["concepts", "delete", "--store", store_uri, "--tenant", "acme", "mia"]) == 0
    capsys.readouterr()
    assert main(["concepts", "list", "--store", store_uri, "--tenant", "acme", "--json"]) == 0
    assert '"mia"' not in capsys.readouterr().out
    assert main(["store", "verify", "--store", store_uri]) == 0
