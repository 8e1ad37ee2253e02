"""verify never crashes, checks what load checks (the same semantic checks as commit), and `cns store verify` exits
with a reliable code."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from store_data import BASE, SHAPES, make_state

from cns_ray.cli import main
from cns_ray.config import StoreConfig
from cns_ray.delta import LayerDelta
from cns_ray.errors import CorruptStateError
from cns_ray.store import ConceptStore, codec
from cns_ray.store.manifest import file_digest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture()
def store(tmp_path) -> ConceptStore:
    return ConceptStore(StoreConfig(uri=str(tmp_path / "s")))


def _rewrite(store: ConceptStore, tenant: str, v: int, file: str, data: bytes) -> None:
    """Replace a version file and fix its record's digest, as a consistent but wrong writer would."""
    b = store.backend
    b.put(f"tenants/{tenant}/versions/{v}/{file}", data)
    rec = json.loads(b.get(f"tenants/{tenant}/versions/{v}/version.json"))
    rec["files"][file] = file_digest(data)
    b.put(f"tenants/{tenant}/versions/{v}/version.json", json.dumps(rec).encode())


def _non_utf8_metadata(data: bytes) -> bytes:
    table = pq.read_table(pa.BufferReader(data))
    md = dict(table.schema.metadata)
    md[b"cns.kind"] = b"\xff\xfe tokens"
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(md), sink)
    return sink.getvalue().to_pybytes()


def test_non_utf8_metadata_is_reported_and_other_tenants_still_checked(store, capsys):
    for t in ("acme", "bravo"):
        store.commit(t, make_state(t), parent=None)
    tokens = store.backend.get("tenants/acme/versions/1/tokens.parquet")
    _rewrite(store, "acme", 1, "tokens.parquet", _non_utf8_metadata(tokens))
    store.backend.put("tenants/bravo/versions/1/delta.parquet", b"garbage")
    with pytest.raises(CorruptStateError, match="not UTF-8"):
        store.load("acme")
    problems = store.verify()
    assert len(problems) == 2, problems
    assert "'acme' version 1" in problems[0] and "not UTF-8" in problems[0]
    assert "'bravo' version 1" in problems[1] and "delta.parquet" in problems[1]
    assert main(["store", "verify", "--store", store.uri()]) == 1
    out = capsys.readouterr().out
    assert "2 problem(s)" in out and "Traceback" not in out


def test_load_and_verify_run_the_commit_checks(store):
    state = make_state("acme", ("rex", "cat"))
    store.commit("acme", state, parent=None)
    layer = next(iter(SHAPES))
    d = state.delta.layers[layer]
    uncovered = [i for i in range(SHAPES[layer][0] * SHAPES[layer][1])
                 if not any(i in set(c.neurons[layer].tolist()) for c in state.concepts)][0]
    idx = torch.sort(torch.cat([d.index, torch.tensor([uncovered])])).values
    state.delta.layers[layer] = LayerDelta(idx, torch.zeros(idx.numel()))
    _rewrite(store, "acme", 1, "delta.parquet", codec.encode_delta(state.delta))
    rec = json.loads(store.backend.get("tenants/acme/versions/1/version.json"))
    rec["nnz"] = state.delta.nnz
    store.backend.put("tenants/acme/versions/1/version.json", json.dumps(rec).encode())
    with pytest.raises(CorruptStateError, match="1 of .* delta entries lie on no concept's neurons"):
        store.load("acme")
    (p,) = store.verify()
    assert "no concept's neurons" in p


def test_load_checks_token_width_and_target_layers(store):
    store.commit("acme", make_state("acme"), parent=None)
    store.load("acme", shapes=SHAPES, base_id=BASE, token_dim=24)
    with pytest.raises(CorruptStateError, match="width \\[24\\], the text encoder's is 32"):
        store.load("acme", token_dim=32)
    fewer = dict(list(SHAPES.items())[1:])
    with pytest.raises(Exception, match="not a target"):
        store.load("acme", shapes=fewer)


def test_general_mask_cache_has_a_digest(store):
    masks = {n: torch.rand(s, generator=torch.Generator().manual_seed(0)) < 0.5 for n, s in SHAPES.items()}
    store.put_general_masks(BASE, "k1", masks, {})
    other = codec.encode_masks({n: ~m for n, m in masks.items()}, {"base_id": BASE, "key": "k1"})
    store.backend.put(f"bases/{BASE}/general/k1.parquet", other)  # decodable, but not what was cached
    assert store.get_general_masks(BASE, "k1") is None
    (p,) = store.verify()
    assert "k1.parquet" in p and "digest" in p


def test_store_verify_exits_0_twenty_times_in_a_row(tmp_path):
    """pyarrow 26 + torch 2.13 aborted 2 of 20 runs at interpreter exit (rc 134) before `exit_hard`."""
    store = ConceptStore(StoreConfig(uri=str(tmp_path / "s")))
    store.commit("acme", make_state("acme"), parent=None)
    env = {**os.environ, "PYTHONPATH": REPO}
    cmd = [sys.executable, "-m", "cns_ray.cli", "store", "verify", "--store", store.uri(), "--json"]
    codes = []
    for _ in range(10):  # two processes at a time: the abort is at each one's own exit
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            codes.append(proc.returncode)
            assert proc.returncode != 0 or json.loads(out)["problems"] == []  # output flushed before the exit
    assert codes == [0] * 20, codes


def test_verify_against_a_base(store, capsys):
    store.commit("acme", make_state("acme"), parent=None)
    assert store.verify(shapes=SHAPES, base_id=BASE, token_dim=24) == []
    (p,) = store.verify(shapes=SHAPES, base_id="ffffffffffffffff", token_dim=24)
    assert "another base model" in p
    (p,) = store.verify(token_dim=32)
    assert "text encoder's is 32" in p
