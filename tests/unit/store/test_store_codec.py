"""Parquet codec: bit-exact round trips, size per entry, and refusal of damaged files."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from store_data import BASE, SHAPES, make_concept, make_state

from cns_ray.delta import LayerDelta, SparseDelta
from cns_ray.errors import CorruptStateError, DeltaValidationError
from cns_ray.store import codec
from cns_ray.store.codec import delta_nbytes


def _special_values(n: int, dtype) -> torch.Tensor:
    """Random values plus the awkward ones: +-0, subnormals, extremes of the dtype."""
    g = torch.Generator().manual_seed(0)
    v = (torch.randn(n, generator=g) * 1e-3).to(dtype)
    fi = torch.finfo(dtype)
    special = torch.tensor([0.0, -0.0, fi.tiny / 4, -fi.tiny / 4, fi.max, -fi.max, fi.eps], dtype=dtype)
    v[: special.numel()] = special
    return v


@pytest.mark.parametrize("value_dtype, tdtype, bits", [("float16", torch.float16, torch.int16), ("float32", torch.float32, torch.int32)])
def test_delta_round_trip_bit_exact(value_dtype, tdtype, bits):
    layers = {}
    for k, (name, (o, i)) in enumerate(SHAPES.items()):
        idx = torch.randperm(o * i, generator=torch.Generator().manual_seed(k))[: o * i // 3].sort().values
        layers[name] = LayerDelta(idx, _special_values(idx.numel(), tdtype))
    delta = SparseDelta(BASE, dict(SHAPES), layers)
    got = codec.decode_delta(codec.encode_delta(delta, value_dtype))
    assert got.base_id == BASE and got.shapes == delta.shapes and sorted(got.layers) == sorted(layers)
    for name, d in layers.items():
        assert got.layers[name].index.dtype == torch.int64 and torch.equal(got.layers[name].index, d.index)
        assert got.layers[name].value.dtype == tdtype
        assert torch.equal(got.layers[name].value.view(bits), d.value.view(bits))  # -0.0 and subnormals included


def test_float32_values_stored_as_float16_round_to_nearest():
    delta = make_state("acme").delta
    got = codec.decode_delta(codec.encode_delta(delta, "float16"))
    for n, d in delta.layers.items():
        assert torch.equal(got.layers[n].value.view(torch.int16), d.value.to(torch.float16).view(torch.int16))


def test_empty_delta_and_file_layout():
    data = codec.encode_delta(SparseDelta.empty(BASE), "float16")
    assert codec.decode_delta(data).nnz == 0
    delta = make_state("acme").delta
    f = pq.ParquetFile(pa.BufferReader(codec.encode_delta(delta, "float16")))
    schema = f.schema_arrow  # what any Parquet reader sees: plain columns, no embedded Arrow schema needed
    assert schema.field("layer").type == pa.string() and f.metadata.row_group(0).column(0).has_dictionary_page
    assert schema.field("index").type == pa.uint32() and schema.field("value").type == pa.float16()
    col = f.metadata.row_group(0).column(1)
    assert col.compression == "ZSTD" and "DELTA_BINARY_PACKED" in col.encodings and not col.has_dictionary_page
    assert b"ARROW:schema" not in f.metadata.metadata and not col.is_stats_set
    assert set(f.metadata.metadata) >= {b"cns.base_id", b"cns.layers", b"cns.schema_version"}
    assert f.metadata.metadata[b"cns.schema_version"] == b"2"


def _sd_like_delta(density: float, seed: int = 0) -> SparseDelta:
    """32 layers with SD-1.5's K/V names and shapes (320..1280 x 768): random indices, N(0, 1e-3) fp16 values."""
    blocks = [("down_blocks.0", 2, 320), ("down_blocks.1", 2, 640), ("down_blocks.2", 2, 1280), ("mid_block", 1, 1280),
              ("up_blocks.1", 3, 1280), ("up_blocks.2", 3, 640), ("up_blocks.3", 3, 320)]
    shapes = {f"{b}.attentions.{a}.transformer_blocks.0.attn2.to_{kv}": (o, 768) for b, n, o in blocks
              for a in range(n) for kv in "kv"}
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for name, (o, i) in shapes.items():
        idx = (torch.rand(o * i, generator=g) < density).nonzero().squeeze(1)
        layers[name] = LayerDelta(idx, (torch.randn(idx.numel(), generator=g) * 1e-3).half())
    return SparseDelta(BASE, shapes, layers)


def test_footer_is_small_and_layer_table_stored_once():
    delta = _sd_like_delta(0.001)
    data = codec.encode_delta(delta)
    meta = pq.read_metadata(pa.BufferReader(data))
    assert len(delta.shapes) == 32 and meta.serialized_size <= 1024  # was ~5.9 KB: shapes JSON twice + statistics
    assert data.count(b"attn2.to_k") <= 16  # layer names: once in the dictionary page, zlib-packed in the footer


def test_encoding_is_deterministic_and_byte_exact():
    delta = _sd_like_delta(0.002, seed=3)
    data = codec.encode_delta(delta)
    assert codec.encode_delta(codec.decode_delta(data)) == data


@pytest.mark.parametrize("value_dtype, bits", [("float16", torch.int16), ("float32", torch.int32)])
def test_schema_1_files_still_read(value_dtype, bits):
    """delta.parquet written by the schema-1 codec (stores in the wild hold them): same delta, bit for bit."""
    from pathlib import Path

    data = (Path(__file__).parent / "data" / f"delta_v1_{value_dtype}.parquet").read_bytes()
    assert pq.read_metadata(pa.BufferReader(data)).metadata[b"cns.schema_version"] == b"1"
    want = make_state("acme", ("rex", "cat")).delta  # what the fixture was written from
    got = codec.decode_delta(data, "v1/delta.parquet")
    assert got.base_id == want.base_id and got.shapes == want.shapes and sorted(got.layers) == sorted(want.layers)
    for n, d in want.layers.items():
        assert torch.equal(got.layers[n].index, d.index)
        assert torch.equal(got.layers[n].value.view(bits), d.value.to(got.layers[n].value.dtype).view(bits))
    assert codec.decode_delta(codec.encode_delta(got, value_dtype)).layers.keys() == got.layers.keys()


def test_shape_only_layers_and_empty_layers_round_trip():
    shapes = dict(SHAPES)
    names = sorted(shapes)
    layers = {names[0]: LayerDelta(torch.tensor([0, 5, 7]), torch.tensor([1.0, -2.0, 3.0])),
              names[1]: LayerDelta(torch.zeros(0, dtype=torch.int64), torch.zeros(0))}
    got = codec.decode_delta(codec.encode_delta(SparseDelta(BASE, shapes, layers)))
    assert got.shapes == shapes and sorted(got.layers) == names[:2] and got.layers[names[1]].nnz == 0


def test_damaged_layer_table_refused():
    data = codec.encode_delta(make_state("acme").delta)
    t = pq.read_table(pa.BufferReader(data))
    for bad in (b"not base64 !", b"AAAA", b""):
        md = {**t.schema.metadata, b"cns.layers": bad}
        sink = pa.BufferOutputStream()
        pq.write_table(t.replace_schema_metadata(md), sink)
        with pytest.raises(CorruptStateError, match="metadata 'layers'"):
            codec.decode_delta(sink.getvalue().to_pybytes(), "x/delta.parquet")


@pytest.mark.parametrize("reader", ["duckdb", "polars"])
def test_other_readers_see_the_columns(reader, tmp_path):
    """DuckDB and polars, where installed, read layer/index/value as written (the store is plain Parquet)."""
    mod = pytest.importorskip(reader)
    delta = make_state("acme").delta
    path = tmp_path / "delta.parquet"
    path.write_bytes(codec.encode_delta(delta, "float32"))
    if reader == "duckdb":
        rows = mod.sql(f"select layer, index, value from '{path}'").fetchall()
    else:
        rows = mod.read_parquet(path).select(["layer", "index", "value"]).rows()
    want = [(n, int(i), float(v)) for n in sorted(delta.layers)
            for i, v in zip(delta.layers[n].index.tolist(), delta.layers[n].value.tolist())]
    assert [(r[0], int(r[1]), float(r[2])) for r in rows] == want


def test_bytes_per_entry_fp16_at_realistic_density():
    """1% of SD-1.5-like layer sizes (320..1280 x 768): the stored cost per delta entry."""
    shapes = {f"l{k}.attn2.to_{kv}": (o, 768) for k, o in enumerate((320, 640, 1280)) for kv in "kv"}
    g = torch.Generator().manual_seed(0)
    layers = {}
    for n, (o, i) in shapes.items():
        idx = (torch.rand(o * i, generator=g) < 0.01).nonzero().squeeze(1)
        layers[n] = LayerDelta(idx, torch.randn(idx.numel(), generator=g) * 1e-3)
    delta = SparseDelta(BASE, shapes, layers)
    fp16, fp32 = delta_nbytes(delta, "float16"), delta_nbytes(delta, "float32")
    print(f"\nstored delta: {delta.nnz} entries; fp16 {fp16['bytes_per_entry']:.2f} B/entry, fp32 {fp32['bytes_per_entry']:.2f} B/entry")
    assert fp16["nnz"] == delta.nnz > 30_000
    assert fp16["bytes_per_entry"] < 4.0
    assert fp16["bytes_per_entry"] < fp32["bytes_per_entry"] < 6.0


def test_tokens_concepts_masks_round_trip():
    state = make_state("acme", ("rex", "cat"))
    tokens = codec.decode_tokens(codec.encode_tokens(state.tokens))
    assert sorted(tokens) == sorted(state.tokens) and all(torch.equal(tokens[t], state.tokens[t]) for t in tokens)
    state.concepts[1].method, state.concepts[1].version_added, state.concepts[1].shapes = "cones", 3, dict(SHAPES)
    # a Cones concept's indices travel in cones.parquet, not in concepts.parquet
    got = codec.attach_cones(codec.decode_concepts(codec.encode_concepts(state.concepts)),
                             codec.decode_cones(codec.encode_cones(state.concepts)), "cones.parquet")
    for g, w in zip(got, state.concepts):
        assert (g.name, g.token, g.class_word, g.method, g.stats, g.version_added) == (
            w.name, w.token, w.class_word, w.method, w.stats, w.version_added)
        assert all(torch.equal(g.neurons[n], w.neurons[n]) for n in w.neurons) and sorted(g.neurons) == sorted(w.neurons)
    masks = {n: torch.rand(o, i) < 0.3 for n, (o, i) in SHAPES.items()}
    masks["odd"] = torch.rand(3, 5) < 0.5  # 15 bits: not a whole number of bytes
    got_masks, meta = codec.decode_masks(codec.encode_masks(masks, {"k": 1}))
    assert meta == {"k": 1} and all(torch.equal(got_masks[n], masks[n]) for n in masks)


@pytest.mark.parametrize("cut", [0, 10, 0.5, -8, -1])
def test_truncated_or_garbage_files_refused(cut):
    data = codec.encode_delta(make_state("acme").delta)
    n = int(len(data) * cut) if isinstance(cut, float) else cut
    bad = data[:n] if n else b"not parquet at all"
    with pytest.raises(CorruptStateError, match="some/delta.parquet"):
        codec.decode_delta(bad, "some/delta.parquet")


def _rewrite(data: bytes, **columns) -> bytes:
    """The same file with some columns replaced (metadata kept): a damaged but readable file."""
    t = pq.read_table(pa.BufferReader(data))
    for name, arr in columns.items():
        t = t.set_column(t.column_names.index(name), name, arr)
    sink = pa.BufferOutputStream()
    pq.write_table(t, sink)
    return sink.getvalue().to_pybytes()


def test_readable_but_invalid_contents_refused():
    state = make_state("acme")
    data = codec.encode_delta(state.delta, "float32")
    t = pq.read_table(pa.BufferReader(data))
    vals = t.column("value").to_numpy().copy()
    vals[3] = float("nan")
    with pytest.raises(DeltaValidationError, match="non-finite"):
        codec.decode_delta(_rewrite(data, value=pa.array(vals)), "x/delta.parquet")
    idx = t.column("index").to_numpy().copy()
    idx[[1, 2]] = idx[[2, 1]]
    with pytest.raises(DeltaValidationError, match="not sorted"):
        codec.decode_delta(_rewrite(data, index=pa.array(idx)), "x/delta.parquet")
    idx = t.column("index").to_numpy().copy()
    idx[-1] = 10**6
    with pytest.raises(DeltaValidationError, match="index 1000000"):
        codec.decode_delta(_rewrite(data, index=pa.array(idx)), "x/delta.parquet")
    with pytest.raises(CorruptStateError, match="column 'value' has type double"):
        codec.decode_delta(_rewrite(data, value=pa.array(vals.astype("float64"))), "x/delta.parquet")
    short = pq.read_table(pa.BufferReader(data)).slice(0, t.num_rows - 1)
    sink = pa.BufferOutputStream()
    pq.write_table(short, sink)
    with pytest.raises(CorruptStateError, match="metadata counts"):
        codec.decode_delta(sink.getvalue().to_pybytes(), "x/delta.parquet")
    with pytest.raises(CorruptStateError, match="not a cns delta file"):
        codec.decode_delta(codec.encode_tokens(state.tokens), "x/delta.parquet")


def test_unsorted_concept_neurons_refused():
    c = make_concept("rex", 0)
    data = codec.encode_concepts([c])
    t = pq.read_table(pa.BufferReader(data))
    rows = t.column("neurons").to_pylist()
    rows[0][0]["index"] = list(reversed(rows[0][0]["index"]))
    with pytest.raises(CorruptStateError, match="not sorted unique"):
        codec.decode_concepts(_rewrite(data, neurons=pa.array(rows, t.schema.field("neurons").type)), "c.parquet")
