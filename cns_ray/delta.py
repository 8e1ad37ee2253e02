"""SparseDelta: a tenant's cumulative sparse weight delta over a base model: validation, merge, stats.

A delta holds, per target layer, sorted unique flat indices into ``[out * in]`` and one value each. Validation
checks everything first and raises once with every problem, before any weight is touched. How a delta reaches a
layer (swapped in with an exact restore, or added per sample without writing) is :mod:`cns_ray.layers`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch

from cns_ray.errors import BaseMismatchError, DeltaValidationError
from cns_ray.neurons import Masks, mask_to_indices

ALLOWED_VALUE_DTYPES = (torch.float16, torch.float32, torch.bfloat16)


@dataclass
class LayerDelta:
    """One layer's entries. index: int64 [nnz], sorted, unique; value: [nnz] float16/float32."""

    index: torch.Tensor
    value: torch.Tensor

    @property
    def nnz(self) -> int:
        return int(self.index.numel())


@dataclass
class SparseDelta:
    """Cumulative sparse delta ``W_tenant - W_base`` on some target layers of one base model."""

    base_id: str
    shapes: dict[str, tuple[int, int]]
    """Shape ``[out, in]`` of every layer present in ``layers``."""
    layers: dict[str, LayerDelta] = field(default_factory=dict)

    # ---------------------------------------------------------------- construction
    @classmethod
    def empty(cls, base_id: str) -> "SparseDelta":
        return cls(base_id=base_id, shapes={}, layers={})

    @classmethod
    def from_weights(
        cls,
        base: Mapping[str, torch.Tensor],
        new: Mapping[str, torch.Tensor],
        masks: Masks,
        base_id: str,
        dtype: torch.dtype = torch.float32,
    ) -> "SparseDelta":
        """Delta ``new - base`` on the True entries of ``masks`` (layers with no entry are left out)."""
        shapes, layers = {}, {}
        for name, mask in masks.items():
            idx = mask_to_indices(mask)  # [nnz] int64, sorted
            if idx.numel() == 0:
                continue
            b = base[name].detach().reshape(-1)
            n = new[name].detach().reshape(-1)
            value = (n.index_select(0, idx).float() - b.index_select(0, idx).float()).to(dtype)
            shapes[name] = tuple(base[name].shape)
            layers[name] = LayerDelta(idx, value)
        return cls(base_id=base_id, shapes=shapes, layers=layers)

    # ---------------------------------------------------------------- stats
    @property
    def nnz(self) -> int:
        return sum(d.nnz for d in self.layers.values())

    def density(self, total_target_weights: int) -> float:
        return self.nnz / max(total_target_weights, 1)

    def stats(self) -> dict[str, dict[str, float]]:
        """Per layer: nnz, density in its layer, mean |value|."""
        out = {}
        for name, d in self.layers.items():
            numel = self.shapes[name][0] * self.shapes[name][1]
            out[name] = {
                "nnz": d.nnz,
                "density": d.nnz / numel,
                "mean_abs": float(d.value.float().abs().mean()) if d.nnz else 0.0,
            }
        return out

    def to_dtype(self, dtype: torch.dtype) -> "SparseDelta":
        return SparseDelta(
            self.base_id, dict(self.shapes), {n: LayerDelta(d.index, d.value.to(dtype)) for n, d in self.layers.items()}
        )

    def indices(self) -> dict[str, torch.Tensor]:
        return {n: d.index for n, d in self.layers.items()}

    # ---------------------------------------------------------------- validation
    def problems(
        self, shapes: Mapping[str, tuple[int, int]], base_id: str | None = None, *, check_entries: bool = True
    ) -> list[str]:
        """Every reason this delta cannot be applied to a base with these target ``shapes``; [] if none.

        ``check_entries=False`` checks base_id, layer names and shapes only (cost per layer, not per entry): for
        a delta whose entries were already validated when it was loaded and that has not changed since.
        """
        p: list[str] = []
        if base_id is not None and self.base_id != base_id:
            p.append(
                f"base_id {self.base_id!r} differs from the served base {base_id!r}: this state was learned on "
                "another base model; relearn it on this base or serve the base it was made for"
            )
        for name in self.layers:
            if name not in self.shapes:
                p.append(f"layer {name!r} has entries but no recorded shape")
        for name, shape in self.shapes.items():
            if name not in shapes:
                p.append(f"layer {name!r} is not a target of this base model (it has {len(shapes)} targets)")
                continue
            if tuple(shape) != tuple(shapes[name]):
                p.append(f"layer {name!r} has shape {tuple(shape)} in the delta but {tuple(shapes[name])} in the base")
        for name, d in self.layers.items():
            if name not in self.shapes or name not in shapes:
                continue
            if check_entries:
                p.extend(_layer_problems(name, d, shapes[name]))
            elif d.index.dim() != 1 or d.index.numel() != d.value.numel():
                p.append(f"layer {name!r}: {d.index.numel()} indices but {d.value.numel()} values")
        return p

    def validate(
        self,
        shapes: Mapping[str, tuple[int, int]],
        base_id: str | None = None,
        source: str = "delta",
        *,
        check_entries: bool = True,
    ) -> None:
        """Raise :class:`DeltaValidationError` (or :class:`BaseMismatchError`) listing every problem."""
        p = self.problems(shapes, base_id, check_entries=check_entries)
        if p:
            cls = BaseMismatchError if base_id is not None and self.base_id != base_id else DeltaValidationError
            raise cls(p, source=source)

    # ---------------------------------------------------------------- algebra
    def merge(self, newer: "SparseDelta") -> "SparseDelta":
        """Union of two cumulative states of one base; on shared entries ``newer`` wins."""
        return self._combine(newer, override=True)

    def add(self, other: "SparseDelta") -> "SparseDelta":
        """Sum of two deltas (independent per-concept deltas merged: the fusion baseline)."""
        return self._combine(other, override=False)

    def _combine(self, other: "SparseDelta", override: bool) -> "SparseDelta":
        if other.base_id != self.base_id:
            raise BaseMismatchError(
                [f"cannot combine deltas of base {self.base_id!r} and {other.base_id!r}: learn both on one base"]
            )
        shapes = dict(self.shapes)
        for n, s in other.shapes.items():
            if n in shapes and tuple(shapes[n]) != tuple(s):
                raise DeltaValidationError([f"layer {n!r}: shape {shapes[n]} vs {s}"], source="merge")
            shapes[n] = tuple(s)
        layers = {}
        for n in sorted(set(self.layers) | set(other.layers)):
            a, b = self.layers.get(n), other.layers.get(n)
            if a is None or b is None:
                d = a if b is None else b
                layers[n] = LayerDelta(d.index.clone(), d.value.clone())
                continue
            dtype = torch.promote_types(a.value.dtype, b.value.dtype)
            idx = torch.cat([a.index, b.index])
            val = torch.cat([a.value.to(dtype), b.value.to(dtype)])
            order = torch.sort(idx, stable=True).indices
            idx, val = idx[order], val[order]
            uniq, counts = torch.unique_consecutive(idx, return_counts=True)
            if override:
                last = torch.cumsum(counts, 0) - 1  # the newer one of each run (stable sort keeps order)
                layers[n] = LayerDelta(uniq, val[last])
            else:
                inv = torch.repeat_interleave(torch.arange(uniq.numel()), counts)
                summed = torch.zeros(uniq.numel(), dtype=torch.float32).index_add_(0, inv, val.float())
                layers[n] = LayerDelta(uniq, summed.to(dtype))
        return SparseDelta(self.base_id, shapes, layers)

    def without(self, drop: Mapping[str, torch.Tensor]) -> "SparseDelta":
        """A copy without the entries at ``drop`` (name -> flat indices); emptied layers are removed."""
        layers, shapes = {}, {}
        for n, d in self.layers.items():
            keep = ~torch.isin(d.index, drop[n]) if n in drop else torch.ones(d.nnz, dtype=torch.bool)
            if int(keep.sum()) == 0:
                continue
            layers[n] = LayerDelta(d.index[keep], d.value[keep])
            shapes[n] = self.shapes[n]
        return SparseDelta(self.base_id, shapes, layers)

    def applied_to(self, base: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """New tensors ``base + delta`` for the delta's layers, computed exactly as :func:`cns_ray.layers.apply_` does."""
        out = {}
        for n, d in self.layers.items():
            w = base[n].detach().clone()
            w.view(-1).index_add_(0, d.index, d.value.to(w.dtype))
            out[n] = w
        return out


def _layer_ok(d: LayerDelta, numel: int) -> bool:
    """One cheap pass for the common case (valid); :func:`_layer_problems` explains a failure in detail."""
    idx, val = d.index, d.value
    if idx.dim() != 1 or val.dim() != 1 or idx.numel() != val.numel():
        return False
    if idx.dtype not in (torch.int64, torch.int32) or val.dtype not in ALLOWED_VALUE_DTYPES:
        return False
    if idx.numel() == 0:
        return True
    return (
        int(idx[0]) >= 0
        and int(idx[-1]) < numel
        and bool((idx[1:] > idx[:-1]).all())
        and bool(torch.isfinite(val).all())
    )


def _layer_problems(name: str, d: LayerDelta, shape: tuple[int, int]) -> list[str]:
    p: list[str] = []
    numel = shape[0] * shape[1]
    if _layer_ok(d, numel):
        return p
    idx, val = d.index, d.value
    if idx.dim() != 1 or val.dim() != 1:
        return [f"layer {name!r}: index and value must be 1-D, got {tuple(idx.shape)} and {tuple(val.shape)}"]
    if idx.numel() != val.numel():
        return [f"layer {name!r}: {idx.numel()} indices but {val.numel()} values; the file is truncated or corrupt"]
    if idx.dtype not in (torch.int64, torch.int32):
        p.append(f"layer {name!r}: index dtype {idx.dtype} must be int64 or int32")
    if val.dtype not in ALLOWED_VALUE_DTYPES:
        p.append(f"layer {name!r}: value dtype {val.dtype} must be one of float16/float32/bfloat16")
    if idx.numel() == 0:
        return p
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= numel:
        bad = hi if hi >= numel else lo
        p.append(
            f"layer {name!r} has index {bad}, layer has {numel} entries (shape {tuple(shape)}): "
            "the delta was made for another base model or is corrupt"
        )
    if idx.numel() > 1:
        diffs = idx[1:] - idx[:-1]
        if bool((diffs == 0).any()):
            p.append(f"layer {name!r}: {int((diffs == 0).sum())} duplicate indices; indices must be unique")
        if bool((diffs < 0).any()):
            p.append(f"layer {name!r}: indices are not sorted ascending (first drop at position {int((diffs < 0).nonzero()[0])})")
    if val.is_floating_point():
        nonfinite = int((~torch.isfinite(val)).sum())
        if nonfinite:
            p.append(f"layer {name!r}: {nonfinite} non-finite values (nan/inf); the state is corrupt, relearn or roll back")
    return p


# -------------------------------------------------------------------- moved names
def __getattr__(name: str):
    """``apply_``, ``restore_``, ``swapped`` and ``Originals`` live in :mod:`cns_ray.layers` (the one per-layer
    operation); these names stay importable from here for existing callers."""
    if name in ("apply_", "restore_", "swapped", "Originals"):
        from cns_ray import layers

        return getattr(layers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
