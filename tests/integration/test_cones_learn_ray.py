"""`cns learn --method cones` end to end: a real local Ray Train run, one commit of an index-only concept, shown
with its method, then served: the named concept's neurons are shut in the image's weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch

EXAMPLES = Path(__file__).resolve().parents[2] / "cns_ray" / "data" / "examples"


def test_cli_learns_a_cones_concept_with_ray_and_serves_it(ray_local, tmp_path, capsys, tiny_base):
    from cns_ray.cli import main
    from cns_ray.config import StoreConfig
    from cns_ray.serve.swap import GenerationRequest, ServedTenant, generate_images, weights_digest
    from cns_ray.store import ConceptStore
    from cns_ray.store.manifest import CONES_FILE

    uri = str(tmp_path / "store")
    rc = main(["learn", "--store", uri, "--tenant", "acme", "--concept", "toy", "--class-word", "toy",
               "--images", str(EXAMPLES / "toy"), "--method", "cones", "--cones-ratio", "0.02", "--steps", "2",
               "--batch-size", "1", "--cpus-per-worker", "0.5", "--checkpoint-every", "1"])
    assert rc == 0
    store = ConceptStore(StoreConfig(uri=uri))
    st = store.load("acme", shapes=tiny_base.target_shapes(), base_id=tiny_base.base_id)
    rec = st.concept("toy")
    assert rec.method == "cones" and rec.nnz > 0 and st.delta.nnz == 0 and st.tokens == {}
    assert rec.stats["steps"] == 2
    assert CONES_FILE in store.read_version_files("acme", store.version_entry("acme", st.version))
    capsys.readouterr()
    assert main(["concepts", "show", "--store", uri, "--tenant", "acme", "toy", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "cones"

    served = ServedTenant.from_state(st, "cpu", torch.float32)
    weights = tiny_base.target_weights()
    before = weights_digest(tiny_base)
    seen = []
    generate_images(tiny_base, weights, served, GenerationRequest(prompt="a <toy> toy", steps=1, seed=0),
                    on_step=lambda: seen.append({n: w.detach().clone() for n, w in weights.items()}))
    assert weights_digest(tiny_base) == before
    assert all(bool((seen[0][n].reshape(-1)[i] == 0).all()) for n, i in rec.neurons.items())
