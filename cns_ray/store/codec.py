"""Parquet codec of the store's files: bytes in, typed objects out, integrity checked on the way in.

- delta.parquet (schema 2; schema 1 files are still read): ``layer`` (dictionary string), ``index`` (uint32, sorted
  per layer, DELTA_BINARY_PACKED, no dictionary), ``value`` (float16 or float32), zstd; no embedded Arrow schema or
  statistics. File metadata: base_id, value dtype, schema version, and the layer table (names, shapes, per-layer
  row counts) once, zlib-packed: a footer under 1 KB for SD-1.5's 32 layers.
- tokens.parquet: ``token`` (string), ``embedding`` (fixed-size list of float32).
- concepts.parquet: name, token, class_word, method, neurons (list of {layer, index: list<uint32>}), stats (JSON),
  version_added.
- cones.parquet (only in versions with Cones concepts): one row per (concept, layer): ``concept``, ``layer``,
  ``count``, ``k``, ``code`` (the layer's sorted indices as Rice-coded gaps, :mod:`cns_ray.store.gapcode`); file
  metadata: the Cones concepts' names and each row's layer shape. Such a concept's ``neurons`` in concepts.parquet
  are empty (the indices are stored once, here).
- general masks: ``layer``, ``out``, ``in``, ``bits`` (bit-packed bool mask, :func:`cns_ray.neurons.pack_mask`).

Decoders raise :class:`CorruptStateError` naming ``source`` for unreadable/inconsistent files, and
:class:`DeltaValidationError` for a delta whose entries are invalid for its own recorded shapes.
"""

from __future__ import annotations

import base64
import functools
import json
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from cns_ray.delta import LayerDelta, SparseDelta
from cns_ray.errors import CorruptStateError, DeltaValidationError, InvalidNameError
from cns_ray.neurons import pack_mask, unpack_mask
from cns_ray.store import gapcode
from cns_ray.store.names import validate_name, validate_token
from cns_ray.store.state import METHODS, ConceptRecord

SCHEMA_VERSION = 1
VALUE_DTYPES = {"float16": (torch.float16, pa.float16()), "float32": (torch.float32, pa.float32())}
UINT32_MAX = 2**32 - 1
FIX = "fix: roll back to an earlier version (cns concepts rollback) or restore the file from a backup"


# ------------------------------------------------------------------ helpers
def _to_bytes(table: pa.Table, meta: dict[str, object], **kwargs) -> bytes:
    md = {b"cns." + k.encode(): (v if isinstance(v, str) else json.dumps(v)).encode() for k, v in meta.items()}
    table = table.replace_schema_metadata(md)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", **kwargs)
    return sink.getvalue().to_pybytes()


def _to_bytes_lean(table: pa.Table, meta: dict[str, object], use_dictionary: bool | list[str] = False, **kwargs) -> bytes:
    """Like :func:`_to_bytes` with the fixed overhead cut (a Cones concept is a few KB): no embedded Arrow schema
    (~1 KB; the Parquet types read back the same), no min/max statistics (for a binary column Parquet would copy two
    whole values into the footer), dictionaries only for ``use_dictionary``. The ``cns.*`` metadata is written as
    Parquet key-value metadata (readers show it as the schema's metadata)."""
    md = {b"cns." + k.encode(): (v if isinstance(v, str) else json.dumps(v)).encode() for k, v in meta.items()}
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, table.schema, compression="zstd", store_schema=False, write_statistics=False,
                          use_dictionary=use_dictionary, **kwargs) as writer:
        writer.write_table(table)
        writer.add_key_value_metadata(md)
    return sink.getvalue().to_pybytes()


def _read(data: bytes, source: str, kind: str, versions: tuple[str, ...] = (str(SCHEMA_VERSION),),
          read_dictionary: list[str] | None = None) -> tuple[pa.Table, dict[str, str]]:
    try:
        table = pq.read_table(pa.BufferReader(data), read_dictionary=read_dictionary)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise CorruptStateError(f"{source} is unreadable as Parquet ({len(data)} bytes: {e}); it is truncated or corrupt; {FIX}") from e
    try:
        md = {k.decode()[4:]: v.decode() for k, v in (table.schema.metadata or {}).items() if k.startswith(b"cns.")}
    except UnicodeDecodeError as e:
        raise CorruptStateError(f"{source}: file metadata is not UTF-8 ({e}); it is corrupt; {FIX}") from e
    if md.get("kind") != kind:
        raise CorruptStateError(f"{source} is not a cns {kind} file (kind={md.get('kind')!r}); {FIX}")
    if md.get("schema_version") not in versions:
        raise CorruptStateError(
            f"{source} has schema version {md.get('schema_version')!r}, this cns-ray reads {' or '.join(versions)}; "
            "upgrade cns-ray or re-export the state"
        )
    return table, md


def _column(table: pa.Table, name: str, source: str, check) -> pa.Array:
    if name not in table.column_names:
        raise CorruptStateError(f"{source} has no column {name!r} (columns: {table.column_names}); {FIX}")
    col = table.column(name)
    if not check(col.type):
        raise CorruptStateError(f"{source}: column {name!r} has type {col.type}, which this schema does not allow; {FIX}")
    if col.null_count:
        raise CorruptStateError(f"{source}: column {name!r} has {col.null_count} null values; {FIX}")
    return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)


def _json(md: dict[str, str], key: str, source: str):
    try:
        return json.loads(md[key])
    except (KeyError, json.JSONDecodeError) as e:
        raise CorruptStateError(f"{source}: metadata {key!r} is missing or not JSON ({e}); {FIX}") from e


def _guarded(decode):
    """Anything a damaged file makes a decoder raise (bad UTF-8, odd Arrow types, ...) becomes CorruptStateError."""

    @functools.wraps(decode)
    def wrapper(data: bytes, source: str = decode.__name__, *a, **k):
        try:
            return decode(data, source, *a, **k)
        except (CorruptStateError, DeltaValidationError, InvalidNameError):
            raise
        except Exception as e:  # noqa: BLE001 - the file is untrusted input: any failure to decode means damage
            raise CorruptStateError(f"{source} cannot be decoded ({type(e).__name__}: {e}); it is corrupt; {FIX}") from e

    return wrapper


# ------------------------------------------------------------------ delta
DELTA_SCHEMA_VERSION = 2
"""delta.parquet's own schema version. 2: the layer table (names, shapes, counts) once, zlib-compressed, as Parquet
key-value metadata (``cns.layers``); no embedded Arrow schema (which repeated every ``cns.*`` value) and no column
statistics. 1 (still read): ``cns.shapes`` and ``cns.counts`` as JSON, stored twice. The columns are the same."""


def _layer_table(delta: SparseDelta, names: list[str]) -> str:
    """``[[name, out, in, count], ...]`` for the layers with entries (in row order), then ``[name, out, in]`` for
    layers with a shape only; JSON, zlib level 9, base64: ~15 B per SD-1.5 layer (the names share long prefixes)."""
    rows = [[n, *(int(x) for x in delta.shapes[n]), delta.layers[n].nnz] for n in names]
    rows += [[n, *(int(x) for x in s)] for n, s in sorted(delta.shapes.items()) if n not in delta.layers]
    return base64.b64encode(zlib.compress(json.dumps(rows, separators=(",", ":")).encode(), 9)).decode()


def _read_layer_table(md: dict[str, str], source: str) -> tuple[dict[str, tuple], dict[str, int]]:
    try:
        rows = json.loads(zlib.decompress(base64.b64decode(md["layers"], validate=True)))
        shapes = {str(r[0]): (int(r[1]), int(r[2])) for r in rows}
        counts = {str(r[0]): int(r[3]) for r in rows if len(r) == 4}
    except (KeyError, ValueError, TypeError, IndexError, zlib.error) as e:
        raise CorruptStateError(f"{source}: metadata 'layers' is missing or damaged ({type(e).__name__}: {e}); {FIX}") from e
    if len(shapes) != len(rows):
        raise CorruptStateError(f"{source}: metadata 'layers' names a layer twice; {FIX}")
    return shapes, counts


def encode_delta(delta: SparseDelta, value_dtype: str = "float16") -> bytes:
    """SparseDelta -> delta.parquet bytes; values cast to ``value_dtype`` (refused if that makes them non-finite).

    Schema 2: columns ``layer`` (dictionary string), ``index`` (uint32, sorted per layer, DELTA_BINARY_PACKED),
    ``value`` (float16/float32, plain), zstd; shapes and per-layer counts once in the footer (:func:`_layer_table`).
    Only Parquet encodings every reader has (DuckDB and polars read BYTE_STREAM_SPLIT for float/double only)."""
    tdtype, patype = VALUE_DTYPES[value_dtype]
    names = sorted(delta.layers)
    idx_parts, val_parts, codes = [], [], []
    bad = []
    for code, n in enumerate(names):
        d = delta.layers[n]
        val = d.value.detach().cpu().to(tdtype)
        if nonfinite := int((~torch.isfinite(val)).sum()):
            bad.append(f"layer {n!r}: {nonfinite} values are not finite as {value_dtype} (float16 max is 65504)")
        idx_parts.append(d.index.detach().cpu().numpy().astype(np.uint32))
        val_parts.append(val.numpy())
        codes.append(np.full(d.nnz, code, dtype=np.int32))
    if bad:
        raise DeltaValidationError([*bad, "use StoreConfig(value_dtype='float32') or fix the learning run"], source="delta to store")
    empty_val = np.zeros(0, np.float16 if value_dtype == "float16" else np.float32)
    table = pa.table({
        "layer": pa.DictionaryArray.from_arrays(pa.array(np.concatenate(codes) if names else np.zeros(0, np.int32), pa.int32()),
                                                pa.array(names, pa.string())),
        "index": pa.array(np.concatenate(idx_parts) if names else np.zeros(0, np.uint32), pa.uint32()),
        "value": pa.array(np.concatenate(val_parts) if names else empty_val, patype),
    })
    meta = {"kind": "delta", "schema_version": str(DELTA_SCHEMA_VERSION), "base_id": delta.base_id,
            "value_dtype": value_dtype, "layers": _layer_table(delta, names)}
    return _to_bytes_lean(table, meta, use_dictionary=["layer"], column_encoding={"index": "DELTA_BINARY_PACKED"})


@_guarded
def decode_delta(data: bytes, source: str = "delta.parquet") -> SparseDelta:
    """delta.parquet of schema 2 or 1 -> SparseDelta, every entry validated against the file's own shapes."""
    table, md = _read(data, source, "delta", versions=(str(DELTA_SCHEMA_VERSION), "1"), read_dictionary=["layer"])
    value_dtype = md.get("value_dtype")
    if value_dtype not in VALUE_DTYPES:
        raise CorruptStateError(f"{source}: value dtype {value_dtype!r} is not float16 or float32; {FIX}")
    if md["schema_version"] == "1":
        shapes = {n: tuple(int(x) for x in s) for n, s in _json(md, "shapes", source).items()}
        counts = {n: int(c) for n, c in _json(md, "counts", source).items()}
    else:
        shapes, counts = _read_layer_table(md, source)
    layer = _column(table, "layer", source, lambda t: pa.types.is_dictionary(t) or pa.types.is_string(t))
    index = _column(table, "index", source, lambda t: t == pa.uint32()).to_numpy().astype(np.int64)
    value = _column(table, "value", source, lambda t: t == VALUE_DTYPES[value_dtype][1]).to_numpy(zero_copy_only=False)
    problems = []
    if sum(counts.values()) != table.num_rows:
        problems.append(f"metadata counts {sum(counts.values())} rows, the file has {table.num_rows}")
    if missing := sorted(set(counts) - set(shapes)):
        problems.append(f"layers {missing} have entries but no recorded shape")
    if problems:
        raise CorruptStateError(f"{source} is inconsistent: " + "; ".join(problems) + f"; {FIX}")
    if not pa.types.is_dictionary(layer.type):
        layer = pc.dictionary_encode(layer)
    dictionary = layer.dictionary.to_pylist()
    codes = layer.indices.to_numpy()
    layers, start = {}, 0
    for n, c in counts.items():
        seg = codes[start:start + c]
        if n not in dictionary or (c and not bool((seg == dictionary.index(n)).all())):
            raise CorruptStateError(f"{source}: rows {start}..{start + c} are not all layer {n!r} as the metadata says; {FIX}")
        layers[n] = LayerDelta(torch.from_numpy(index[start:start + c].copy()), torch.from_numpy(value[start:start + c].copy()))
        start += c
    delta = SparseDelta(base_id=md.get("base_id", ""), shapes=shapes, layers=layers)
    p = delta.problems(shapes)
    if p:
        raise DeltaValidationError(p, source=source)
    return delta


def delta_nbytes(delta: SparseDelta, value_dtype: str = "float16") -> dict[str, float]:
    """Stored size of ``delta``: ``{"bytes", "nnz", "bytes_per_entry"}`` (the figure the issue asks a test to report)."""
    n = len(encode_delta(delta, value_dtype))
    return {"bytes": n, "nnz": delta.nnz, "bytes_per_entry": n / max(delta.nnz, 1)}


# ------------------------------------------------------------------ tokens
def encode_tokens(tokens: dict[str, torch.Tensor]) -> bytes:
    names = sorted(tokens)
    dims = {tuple(tokens[t].shape) for t in names}
    if len(dims) > 1 or any(len(d) != 1 for d in dims):
        raise CorruptStateError(f"token embeddings must all be 1-D of one width [D], got shapes {sorted(dims)}")
    dim = dims.pop()[0] if dims else 0
    flat = np.concatenate([tokens[t].detach().cpu().float().numpy() for t in names]) if names else np.zeros(0, np.float32)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim) if names else pa.array([], pa.list_(pa.float32(), dim))
    table = pa.table({"token": pa.array(names, pa.string()), "embedding": emb})
    return _to_bytes(table, {"kind": "tokens", "schema_version": str(SCHEMA_VERSION), "dim": str(dim)})


@_guarded
def decode_tokens(data: bytes, source: str = "tokens.parquet") -> dict[str, torch.Tensor]:
    table, md = _read(data, source, "tokens")
    names = _column(table, "token", source, pa.types.is_string).to_pylist()
    emb = _column(table, "embedding", source, lambda t: pa.types.is_fixed_size_list(t) and t.value_type == pa.float32())
    dim = emb.type.list_size
    if str(dim) != md.get("dim"):
        raise CorruptStateError(f"{source}: embedding width {dim} differs from metadata dim {md.get('dim')!r}; {FIX}")
    flat = emb.flatten().to_numpy(zero_copy_only=False).reshape(len(names), dim) if names else np.zeros((0, dim), np.float32)
    if len(set(names)) != len(names):
        raise CorruptStateError(f"{source}: duplicate tokens; {FIX}")
    if not np.isfinite(flat).all():
        bad = [names[i] for i in np.nonzero(~np.isfinite(flat).all(axis=1))[0]]
        raise CorruptStateError(f"{source}: embeddings of {bad} are not finite; {FIX}")
    for t in names:
        validate_token(t)
    return {t: torch.from_numpy(flat[i].copy()) for i, t in enumerate(names)}


# ------------------------------------------------------------------ concepts
_NEURONS = pa.list_(pa.struct([("layer", pa.string()), ("index", pa.list_(pa.uint32()))]))


def encode_concepts(concepts: list[ConceptRecord]) -> bytes:
    """concepts.parquet; a Cones concept's neurons are left out here (they go to :func:`encode_cones`)."""
    rows = [
        [] if c.method == "cones" else
        [{"layer": n, "index": c.neurons[n].detach().cpu().numpy().astype(np.uint32)} for n in sorted(c.neurons)]
        for c in concepts
    ]
    table = pa.table({
        "name": pa.array([c.name for c in concepts], pa.string()),
        "token": pa.array([c.token for c in concepts], pa.string()),
        "class_word": pa.array([c.class_word for c in concepts], pa.string()),
        "method": pa.array([c.method for c in concepts], pa.string()),
        "neurons": pa.array(rows, _NEURONS),
        "stats": pa.array([json.dumps(c.stats, sort_keys=True) for c in concepts], pa.string()),
        "version_added": pa.array([c.version_added for c in concepts], pa.int64()),
    })
    return _to_bytes(table, {"kind": "concepts", "schema_version": str(SCHEMA_VERSION)},
                     use_dictionary=["name", "token", "class_word", "method", "stats"])


@_guarded
def decode_concepts(data: bytes, source: str = "concepts.parquet") -> list[ConceptRecord]:
    table, _ = _read(data, source, "concepts")
    s = pa.types.is_string
    cols = {k: _column(table, k, source, s).to_pylist() for k in ("name", "token", "class_word", "method", "stats")}
    neurons = _column(table, "neurons", source, lambda t: t == _NEURONS)
    if "version_added" not in table.column_names:
        raise CorruptStateError(f"{source} has no column 'version_added'; {FIX}")
    added = table.column("version_added").to_pylist()
    structs = neurons.flatten()  # one {layer, index} per (concept, layer)
    layer_names = structs.field("layer").to_pylist()
    idx_lists = structs.field("index")
    offsets, flat = idx_lists.offsets.to_numpy(), idx_lists.flatten().to_numpy().astype(np.int64)
    outer = neurons.offsets.to_numpy()
    out = []
    for i, name in enumerate(cols["name"]):
        try:
            stats = json.loads(cols["stats"][i])
        except json.JSONDecodeError as e:
            raise CorruptStateError(f"{source}: stats of concept {name!r} are not JSON ({e}); {FIX}") from e
        rec = {}
        for j in range(outer[i], outer[i + 1]):
            ix = torch.from_numpy(flat[offsets[j]:offsets[j + 1]].copy())
            if ix.numel() > 1 and not bool((ix[1:] > ix[:-1]).all()):
                raise CorruptStateError(f"{source}: neurons of concept {name!r} in layer {layer_names[j]!r} are not sorted unique; {FIX}")
            rec[layer_names[j]] = ix
        if cols["method"][i] not in METHODS:
            raise CorruptStateError(f"{source}: concept {name!r} has method {cols['method'][i]!r}, not one of {METHODS}; {FIX}")
        validate_name(name, "concept")
        validate_token(cols["token"][i])
        out.append(ConceptRecord(name=name, token=cols["token"][i], class_word=cols["class_word"][i], neurons=rec,
                                 method=cols["method"][i], stats=stats, version_added=added[i]))
    return out


# ------------------------------------------------------------------ cones (indices only)
def has_cones(concepts: list[ConceptRecord]) -> bool:
    return any(c.method == "cones" for c in concepts)


def encode_cones(concepts: list[ConceptRecord]) -> bytes:
    """cones.parquet of the Cones concepts among ``concepts``: indices only, Rice-coded gaps per (concept, layer)."""
    rows = {"concept": [], "layer": [], "count": [], "k": [], "code": []}
    shapes, names = [], []
    for c in concepts:
        if c.method != "cones":
            continue
        names.append(c.name)
        for layer in sorted(c.neurons):
            if layer not in c.shapes:
                raise CorruptStateError(f"Cones concept {c.name!r} has neurons on layer {layer!r} but no layer shape: "
                                        "the learner records ConceptRecord.shapes; relearn the concept")
            n, k, code = gapcode.encode(c.neurons[layer].detach().cpu().numpy())
            for key, v in (("concept", c.name), ("layer", layer), ("count", n), ("k", k), ("code", code)):
                rows[key].append(v)
            shapes.append(list(c.shapes[layer]))
    table = pa.table({
        "concept": pa.array(rows["concept"], pa.string()), "layer": pa.array(rows["layer"], pa.string()),
        "count": pa.array(rows["count"], pa.uint32()), "k": pa.array(rows["k"], pa.uint8()),
        "code": pa.array(rows["code"], pa.binary()),
    })
    meta = {"kind": "cones", "schema_version": str(SCHEMA_VERSION), "concepts": names, "shapes": shapes}
    return _to_bytes_lean(table, meta)


@_guarded
def decode_cones(data: bytes, source: str = "cones.parquet") -> dict[str, tuple[dict, dict]]:
    """Cones concept name -> (layer -> sorted unique int64 indices, layer -> shape); every index checked in range of
    its recorded layer shape."""
    table, md = _read(data, source, "cones")
    names = _json(md, "concepts", source)
    shapes = _json(md, "shapes", source)
    s = pa.types.is_string
    concept = _column(table, "concept", source, lambda t: s(t) or pa.types.is_dictionary(t)).to_pylist()
    layer = _column(table, "layer", source, lambda t: s(t) or pa.types.is_dictionary(t)).to_pylist()
    count = _column(table, "count", source, lambda t: t == pa.uint32()).to_pylist()
    ks = _column(table, "k", source, lambda t: t == pa.uint8()).to_pylist()
    code = _column(table, "code", source, pa.types.is_binary).to_pylist()
    if not isinstance(names, list) or len(shapes) != table.num_rows:
        raise CorruptStateError(f"{source}: metadata names {len(shapes)} layer shapes for {table.num_rows} rows; {FIX}")
    out: dict[str, tuple[dict, dict]] = {n: ({}, {}) for n in names}
    for i in range(table.num_rows):
        c, ln, shape = concept[i], layer[i], tuple(int(x) for x in shapes[i])
        if c not in out or ln in out[c][0] or len(shape) != 2:
            raise CorruptStateError(f"{source}: row {i} (concept {c!r}, layer {ln!r}) is not a new layer of a listed "
                                    f"Cones concept with a 2-D shape; {FIX}")
        try:
            idx = gapcode.decode(count[i], ks[i], code[i], shape[0] * shape[1])
        except ValueError as e:
            raise CorruptStateError(f"{source}: indices of concept {c!r} layer {ln!r} (shape {shape}): {e}; {FIX}") from e
        out[c][0][ln] = torch.from_numpy(idx)
        out[c][1][ln] = shape
    return out


def attach_cones(concepts: list[ConceptRecord], cones: dict[str, tuple[dict, dict]] | None, source: str) -> list[ConceptRecord]:
    """Give each Cones concept of concepts.parquet its indices from cones.parquet. ``None`` (the version has no
    cones.parquet): records are kept as read (versions from before that file kept any indices in concepts.parquet)."""
    if cones is None:
        return concepts
    listed = [c.name for c in concepts if c.method == "cones"]
    if sorted(listed) != sorted(cones):
        raise CorruptStateError(f"{source}: Cones concepts {sorted(listed)} in concepts.parquet but {sorted(cones)} in "
                                f"cones.parquet; {FIX}")
    for c in concepts:
        if c.method == "cones":
            c.neurons, c.shapes = cones[c.name]
    return concepts


# ------------------------------------------------------------------ general masks
def encode_masks(masks: dict[str, torch.Tensor], meta: dict) -> bytes:
    names = sorted(masks)
    table = pa.table({
        "layer": pa.array(names, pa.string()),
        "out": pa.array([int(masks[n].shape[0]) for n in names], pa.uint32()),
        "in": pa.array([int(masks[n].shape[1]) for n in names], pa.uint32()),
        "bits": pa.array([pack_mask(masks[n].bool().cpu()).tobytes() for n in names], pa.binary()),
    })
    return _to_bytes(table, {"kind": "masks", "schema_version": str(SCHEMA_VERSION), "meta": meta})


@_guarded
def decode_masks(data: bytes, source: str = "masks.parquet") -> tuple[dict[str, torch.Tensor], dict]:
    table, md = _read(data, source, "masks")
    names = _column(table, "layer", source, pa.types.is_string).to_pylist()
    outs = _column(table, "out", source, lambda t: t == pa.uint32()).to_pylist()
    ins = _column(table, "in", source, lambda t: t == pa.uint32()).to_pylist()
    bits = _column(table, "bits", source, pa.types.is_binary).to_pylist()
    masks = {}
    for n, o, i, b in zip(names, outs, ins, bits):
        try:
            masks[n] = unpack_mask(np.frombuffer(b, dtype=np.uint8), (o, i))
        except ValueError as e:
            raise CorruptStateError(f"{source}: mask of layer {n!r}: {e}; {FIX}") from e
    return masks, _json(md, "meta", source)
