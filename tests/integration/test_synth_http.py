"""``POST /v1/concepts`` with ``method=synthesize`` over real HTTP: the shipped synthesizer commits the concept within
the request (201 + version, no job), the tenant alone sees it, and it is served at once; bad input commits nothing."""

from __future__ import annotations

import io

import numpy as np
import pytest

from conftest import free_port

pytestmark = pytest.mark.slow


def _shipped_matches(base) -> bool:
    from cns_ray.synth.synthesizer import META, default_synth_folder

    import json

    meta = default_synth_folder() / META
    return meta.exists() and json.loads(meta.read_text()).get("base_id") == base.base_id


def _pngs(name: str) -> list[bytes]:
    from PIL import Image

    from cns_ray.world import concepts as wc

    images, _, _ = wc.reference_set(wc.get_concept(name), 4)
    out = []
    for arr in images:
        buf = io.BytesIO()
        Image.fromarray(np.asarray(arr)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def test_synthesize_over_http_commits_within_the_request(ray_local, tiny_base, tmp_path):
    if not _shipped_matches(tiny_base):
        pytest.skip("the shipped synthesizer is not for this base: python -m pipelines.build_library && "
                    "python -m pipelines.train_synth")
    import httpx
    from ray import serve

    from cns_ray.serve.app import build_app
    from cns_ray.serve.auth import hash_key
    from cns_ray.serve.config import ServingConfig

    cfg = ServingConfig(store=str(tmp_path / "store"), torch_threads=1, num_cpus=0.5, default_steps=2, max_steps=8,
                        api_keys={hash_key("k-acme"): "acme", hash_key("k-other"): "other"}, read_env_keys=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(cfg), name="synth-http", route_prefix="/")
    h = {"Authorization": "Bearer k-acme"}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
            files = [("images", (f"{i}.png", p, "image/png")) for i, p in enumerate(_pngs("mia"))]
            form = {"concept": "mia", "class_word": "square", "method": "synthesize"}
            bad = c.post("/v1/concepts", data={**form, "steps": "5000"}, files=files, headers=h)
            assert bad.status_code == 422 and "refine steps" in bad.json()["error"]["message"]
            assert c.get("/v1/concepts", headers=h).json()["version"] is None  # nothing committed
            r = c.post("/v1/concepts", data=form, files=files, headers=h)
            assert r.status_code == 201, r.text
            body = r.json()
            assert body["version"] == 1 and body["method"] == "synthesized" and "job_id" not in body
            listed = c.get("/v1/concepts", headers=h).json()["concepts"]
            assert [(x["name"], x["method"]) for x in listed] == [("mia", "synthesized")]
            assert c.get("/v1/concepts", headers={"Authorization": "Bearer k-other"}).json()["concepts"] == []
            gen = c.post("/v1/images/generations", headers=h,
                         json={"prompt": "a large <mia> square at the center on a grey background", "seed": 1, "steps": 2})
            assert gen.status_code == 200 and gen.headers["X-CNS-Version"] == "1"
            # source: the library's own proposal; refused (nothing committed) without a library, or when malformed
            for extra, want in ((("source", "bogus"),), "must be one of"), ((("source", "blend"), ("method", "cns")),
                                                                          "needs method=synthesize"):
                bad = c.post("/v1/concepts", data={**form, "concept": "mia2", **dict(extra)}, files=files, headers=h)
                assert bad.status_code == 422 and want in bad.json()["error"]["message"], bad.text
            bad = c.post("/v1/concepts", data={**form, "concept": "mia2", "source": "blend"}, files=files, headers=h)
            assert bad.status_code == 422 and "0 finished entries" in bad.json()["error"]["message"], bad.text
            assert c.get("/v1/concepts", headers=h).json()["version"] == 1
            from cns_ray.synth.build import LibraryConfig, build_library

            build_library(cfg.store, "tiny", LibraryConfig(n=2, steps=2, n_images=2, workers=0))
            r = c.post("/v1/concepts", data={**form, "concept": "mia2", "source": "blend"}, files=files, headers=h)
            assert r.status_code == 201 and r.json()["source"] == "blend" and r.json()["version"] == 2, r.text
            listed = c.get("/v1/concepts", headers=h).json()["concepts"]
            assert [x["name"] for x in listed] == ["mia", "mia2"]  # the library is no tenant: acme sees its own only
    finally:
        serve.delete("synth-http")
