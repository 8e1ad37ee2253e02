"""Concept states as vectors on a fixed coordinate set (pure tensor functions: no model, store or Ray).

A concept state is a sparse K/V delta over the base plus one token embedding. The synthesizer works on one fixed
coordinate set for every concept: per target layer a sorted set of flat ``[out*in]`` indices (the union of the
library's supports), then the token. A state's vector is its delta values on those coordinates (0 where the
concept has no entry), followed by its token embedding *minus the class word's embedding* (the placeholder is
initialised from the class word, so the offset is what the concept learned)::

    vector = [ delta on layer 1 coords | ... | delta on layer L coords | token - class_word_embedding ]   # [D]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cns_ray.delta import LayerDelta, SparseDelta
from cns_ray.errors import InputError


@dataclass
class CoordSet:
    """The synthesizer's coordinates: ``index[layer]`` sorted unique int64 flat indices; then ``token_dim`` entries."""

    shapes: dict[str, tuple[int, int]]
    """``[out, in]`` of every layer in ``index``."""
    index: dict[str, torch.Tensor]
    token_dim: int

    @property
    def layers(self) -> list[str]:
        return sorted(self.index)

    @property
    def n_weights(self) -> int:
        return sum(int(i.numel()) for i in self.index.values())

    @property
    def dim(self) -> int:
        return self.n_weights + self.token_dim

    @classmethod
    def union(cls, deltas: list[SparseDelta], token_dim: int) -> "CoordSet":
        """Every entry any of ``deltas`` holds (the union of their supports)."""
        if not deltas:
            raise InputError("a coordinate set needs at least one delta (the library is empty): build the library first")
        parts: dict[str, list[torch.Tensor]] = {}
        shapes: dict[str, tuple[int, int]] = {}
        for d in deltas:
            for n, ld in d.layers.items():
                parts.setdefault(n, []).append(ld.index.long())
                shapes[n] = tuple(d.shapes[n])
        index = {n: torch.unique(torch.cat(p)) for n, p in parts.items()}  # sorted
        return cls(shapes=shapes, index=index, token_dim=int(token_dim))

    def masks(self) -> dict[str, torch.Tensor]:
        """layer -> bool [out, in] of the coordinates (for a learner's explicit masks)."""
        out = {}
        for n in self.layers:
            m = torch.zeros(self.shapes[n][0] * self.shapes[n][1], dtype=torch.bool)
            m[self.index[n]] = True
            out[n] = m.view(self.shapes[n])
        return out

    def vector(self, delta: SparseDelta, token_offset: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(the state's vector [D] float32, how many of its delta entries lie outside the coordinates: dropped)."""
        if token_offset.shape != (self.token_dim,):
            raise InputError(f"token offset of shape {tuple(token_offset.shape)}, the coordinate set's token has "
                             f"{self.token_dim} entries: the state was made with another text encoder")
        chunks, outside = [], 0
        for n in self.layers:
            coords = self.index[n]
            v = torch.zeros(coords.numel())
            ld = delta.layers.get(n)
            if ld is not None and ld.nnz:
                pos = torch.searchsorted(coords, ld.index.long()).clamp(max=max(coords.numel() - 1, 0))
                hit = coords[pos] == ld.index.long() if coords.numel() else torch.zeros(ld.nnz, dtype=torch.bool)
                v[pos[hit]] = ld.value.float()[hit]
                outside += int((~hit).sum())
            chunks.append(v)
        outside += sum(ld.nnz for n, ld in delta.layers.items() if n not in self.index)
        chunks.append(token_offset.float())
        return torch.cat(chunks), outside

    def split(self, vec: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """vector [D] -> (layer -> values [n_coords] on ``index[layer]``, token offset [token_dim])."""
        if vec.shape != (self.dim,):
            raise InputError(f"vector of shape {tuple(vec.shape)}, the coordinate set has {self.dim} entries")
        out, off = {}, 0
        for n in self.layers:
            k = int(self.index[n].numel())
            out[n] = vec[off: off + k]
            off += k
        return out, vec[off:]

    def values_at(self, layer_values: dict[str, torch.Tensor], layer: str, indices: torch.Tensor) -> torch.Tensor:
        """Values [len(indices)] of ``layer_values`` at flat ``indices`` (sorted int64); 0 off the coordinates."""
        out = torch.zeros(indices.numel())
        coords = self.index.get(layer)
        if coords is None or coords.numel() == 0 or indices.numel() == 0:
            return out
        idx = indices.long().cpu()
        pos = torch.searchsorted(coords, idx).clamp(max=coords.numel() - 1)
        hit = coords[pos] == idx
        out[hit] = layer_values[layer][pos[hit]].float()
        return out

    def to_delta(self, layer_values: dict[str, torch.Tensor], base_id: str,
                 support: dict[str, torch.Tensor] | None = None) -> SparseDelta:
        """A SparseDelta of these values on ``support`` (layer -> sorted indices; default: every coordinate)."""
        support = support if support is not None else self.index
        layers, shapes = {}, {}
        for n, idx in support.items():
            if idx.numel() == 0 or n not in self.shapes:
                continue
            layers[n] = LayerDelta(idx.long().cpu(), self.values_at(layer_values, n, idx))
            shapes[n] = self.shapes[n]
        return SparseDelta(base_id=base_id, shapes=shapes, layers=layers)


def class_word_embedding(base, class_word: str) -> torch.Tensor:
    """The embedding a placeholder starts from (the class word's token embeddings, averaged, as inside a caption):
    float32 [D]."""
    from cns_ray.models.text import word_ids_in_caption

    ids = word_ids_in_caption(base.tokenizer, class_word)
    if not ids:
        raise InputError(f"class word {class_word!r} tokenizes to nothing: give a real word, e.g. 'dog'")
    table = base.text_encoder.get_input_embeddings().weight  # [V, D]
    return table[ids].detach().float().mean(0).cpu()
