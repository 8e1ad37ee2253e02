"""How a call changes the base model's layers: the one per-layer operation of serving, evaluation and learning.

A call never holds a changed copy of the base. It opens :func:`target_layers` over the UNet's cross-attention K/V
linears (found by :func:`cns_ray.targets.find_target_modules`, the only place that decides targets) with one typed
plan, runs its forward passes, and on exit, error or cancellation every layer is as it was, bit for bit:

- :class:`Swap`: ``W += dW`` written in place for the block (gather the originals, ``index_add_``), restored by
  copying the originals back (``index_copy_``; never by subtracting, which drifts by rounding). The swap path, a
  mixed batch holding one tenant state, ``cns eval``.
- :class:`PerSample`: each row of the UNet batch gets its own state's sparse term ``c dW^T`` added to the layer's
  output (``out[:, row] += c[:, col] * value``), chosen by an explicit ``sample_to_state`` map; the weights are never
  written, so one batch can hold any mix of tenants. K/V depend only on the text states, which are the same tensor
  at every denoising step, so a layer computes its term once per call and adds it after. :func:`cfg_sample_map`
  builds the map from the classifier-free-guidance layout, the only place that knows that layout.
- :class:`Trainable`: the learners. A layer computes ``F.linear(x, W_start, bias)`` with its own frozen start weight
  (the tenant's current weights, or a dense leaf whose grad a Cones learner reads), or
  :class:`~cns_ray.learn.sparse_linear.SparseDeltaLinear` with trainable values on ``idx`` (no dense weight copy held
  between forward and backward); the module's parameters are never written.

PerSample and Trainable set an instance ``forward`` on the layers they change, for the block only (restored on exit):
not thread-safe for those modules, so no other forward through the same UNet meanwhile (the generator's single
worker thread; one learner per base object). Cones' shut neurons are not a plan of their own: they are a
:class:`SparseDelta` (``-W`` at the indices, :func:`cns_ray.cones.with_shut`), so every plan shuts them the same way.

:func:`spliced_embeddings` is the same idea for the text encoder's input embeddings: per sample, placeholder rows
replaced by a tenant's (or the learner's trainable) token vectors, for one call.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterator, Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from cns_ray.delta import SparseDelta
from cns_ray.errors import CNSError, InputError
from cns_ray.targets import find_target_modules


# -------------------------------------------------------------------- plans
@dataclass(frozen=True)
class Swap:
    """Write ``delta`` into the target weights for the block; restore them exactly on exit."""

    delta: SparseDelta
    base_id: str | None = None
    """The served base's id: a delta of another base is refused (None: not checked)."""
    check_entries: bool = True
    """False: only base_id, layer names and shapes are checked (entries validated when the state was loaded)."""


@dataclass(frozen=True)
class PerSample:
    """Row ``s`` of the UNet batch gets ``states[sample_to_state[s]]``'s sparse term; no weight is written."""

    states: Sequence[SparseDelta]
    sample_to_state: torch.Tensor
    """int64 ``[S]``: for every row of the UNet batch, an index into ``states`` (:func:`cfg_sample_map`)."""
    base_id: str | None = None
    check_entries: bool = True

    def __post_init__(self) -> None:
        m, n = self.sample_to_state, len(self.states)
        if not isinstance(m, torch.Tensor) or m.dim() != 1 or m.dtype != torch.int64:
            what = f"{m.dtype} of shape {tuple(m.shape)}" if isinstance(m, torch.Tensor) else type(m).__name__
            raise InputError(f"sample_to_state is {what}, it must be an int64 [S] tensor: build it with cfg_sample_map")
        if m.numel() and (int(m.min()) < 0 or int(m.max()) >= n):
            raise InputError(f"sample_to_state holds {int(m.min())}..{int(m.max())}, there are {n} states: every entry "
                             f"must be in [0, {n}); pass one state per distinct index")


@dataclass(frozen=True)
class Trainable:
    """The learners: layer ``n`` computes with ``start[n]``, plus trainable ``values`` at ``idx`` where ``sparse``
    has ``n``; layers not in ``start`` run unchanged."""

    start: Mapping[str, torch.Tensor]
    """name -> ``[out, in]`` weight the layer uses instead of its own (frozen, or a leaf for its grad)."""
    sparse: Mapping[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    """name -> (idx int64 ``[nnz]`` distinct flat indices, values ``[nnz]`` trainable)."""


LayerPlan = Union[Swap, PerSample, Trainable]


def cfg_sample_map(image_to_state: Sequence[int], guidance_scale: float,
                   time_cond_proj_dim: int | None = None) -> torch.Tensor:
    """The ``sample_to_state`` map ``[S]`` of a diffusers Stable Diffusion call whose images are ``i -> state``.

    The one place that knows the pipeline's batch layout. With classifier-free guidance (``guidance_scale > 1`` and
    no guidance embedding, ``time_cond_proj_dim`` of the UNet config None: ``StableDiffusionPipeline.
    do_classifier_free_guidance``) the UNet runs on ``[uncond images, cond images]``, so S = 2N and both halves
    follow the image order; without it S = N.
    """
    m = torch.as_tensor(list(image_to_state), dtype=torch.int64)  # [N]
    guided = guidance_scale > 1 and time_cond_proj_dim is None
    return torch.cat([m, m]) if guided else m  # [S]


@contextmanager
def target_layers(unet: nn.Module, plan: LayerPlan) -> Iterator[None]:
    """Within the block the UNet's target K/V layers run as ``plan`` says; on exit (error and cancel too) they are
    exactly as before. Everything is checked before any layer is changed."""
    if isinstance(plan, Trainable) and not plan.start and not plan.sparse:  # nothing to change (a dense baseline)
        ctx: ContextManager = nullcontext()
    else:
        modules = find_target_modules(unet)
        if isinstance(plan, Swap):
            ctx = swapped({n: m.weight for n, m in modules.items()}, plan.delta, plan.base_id,
                          check_entries=plan.check_entries)
        elif isinstance(plan, PerSample):
            ctx = _routed(modules, _per_sample_forwards(modules, plan))
        elif isinstance(plan, Trainable):
            ctx = _routed(modules, _trainable_forwards(modules, plan))
        else:
            raise TypeError(f"plan is a {type(plan).__name__}: pass a Swap, PerSample or Trainable")
    with ctx:
        yield


@contextmanager
def _routed(modules: Mapping[str, nn.Module], forwards: Mapping[str, Callable]) -> Iterator[None]:
    """Instance ``forward`` set on ``modules[n]`` for each ``n`` of ``forwards``; the previous one back on exit."""
    saved = []
    try:
        for n, fwd in forwards.items():
            mod = modules[n]
            saved.append((mod, mod.__dict__.get("forward")))
            mod.forward = fwd
        yield
    finally:
        for mod, before in reversed(saved):
            if before is None:
                del mod.forward
            else:
                mod.forward = before


# -------------------------------------------------------------------- swap: in place, exact restore
@dataclass
class Originals:
    """Gathered original entries, enough to restore the weights exactly."""

    entries: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (index int64 [nnz], original values [nnz])


@torch.no_grad()
def apply_(
    weights: Mapping[str, torch.Tensor], delta: SparseDelta, base_id: str | None = None, *, check_entries: bool = True
) -> Originals:
    """Validate against the live ``weights`` (name -> [out, in]), gather originals, add the delta in place.

    Nothing is written if validation fails. Returns what :func:`restore_` needs. ``check_entries=False`` skips the
    per-entry checks (sorted, unique, in range, finite) for a delta validated when it was loaded (the serving
    cache): base_id, layer names and shapes are still checked.
    """
    delta.validate({n: tuple(w.shape) for n, w in weights.items()}, base_id, check_entries=check_entries)
    originals: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    try:
        for name, d in delta.layers.items():
            flat = weights[name].view(-1)  # [out*in], shares storage
            idx = d.index.to(device=flat.device, dtype=torch.int64)
            originals[name] = (idx, flat.index_select(0, idx))
            flat.index_add_(0, idx, d.value.to(device=flat.device, dtype=flat.dtype))
    except BaseException:
        restore_(weights, Originals(originals))
        raise
    return Originals(originals)


@torch.no_grad()
def restore_(weights: Mapping[str, torch.Tensor], originals: Originals) -> None:
    """Copy the gathered originals back: bit-identical to before :func:`apply_`."""
    for name, (idx, orig) in originals.entries.items():
        weights[name].view(-1).index_copy_(0, idx, orig)


@contextmanager
def swapped(
    weights: Mapping[str, torch.Tensor], delta: SparseDelta, base_id: str | None = None, *, check_entries: bool = True
) -> Iterator[None]:
    """``with swapped(w, d): ...`` applies ``d`` to the weight tensors ``w`` and always restores, on error and cancel
    too. The :class:`Swap` plan of :func:`target_layers`, on weights already at hand (tests, benchmarks)."""
    originals = apply_(weights, delta, base_id, check_entries=check_entries)
    try:
        yield
    finally:
        restore_(weights, originals)


# -------------------------------------------------------------------- per sample: W c + dW c, nothing written
@dataclass(frozen=True)
class SampleDelta:
    """One layer's delta in gather form: ``out[..., rows] += x[..., cols] * values``. All [nnz]."""

    rows: torch.Tensor  # int64
    cols: torch.Tensor  # int64
    values: torch.Tensor  # the layer's dtype


def sample_deltas(delta: SparseDelta, weights: Mapping[str, torch.Tensor], base_id: str | None,
                  *, check_entries: bool = False) -> dict[str, SampleDelta]:
    """Per layer, ``delta`` in gather form, after checking it against ``weights`` (name -> [out, in])."""
    delta.validate({n: tuple(w.shape) for n, w in weights.items()}, base_id, check_entries=check_entries)
    out = {}
    for name, ld in delta.layers.items():
        w = weights[name]  # [out, in]
        idx = ld.index.to(device=w.device, dtype=torch.int64)
        out[name] = SampleDelta(idx // w.shape[1], idx % w.shape[1], ld.value.to(device=w.device, dtype=w.dtype))
    return out


def add_sample_delta(out: torch.Tensor, x: torch.Tensor, d: SampleDelta) -> None:
    """In place: ``out[T, out_features] += x[T, in_features] @ dW^T`` for one sample's sparse ``dW``."""
    out.index_add_(-1, d.rows, x.index_select(-1, d.cols) * d.values)  # [T, nnz] summed into [T, out]


def _per_sample_forwards(modules: Mapping[str, nn.Module], plan: PerSample) -> dict[str, Callable]:
    weights = {n: m.weight for n, m in modules.items()}
    gathers = [sample_deltas(d, weights, plan.base_id, check_entries=plan.check_entries) for d in plan.states]
    rows = plan.sample_to_state.tolist()  # [S]

    def forward_for(name: str, mod: nn.Module) -> Callable:
        memo: list = []  # [(x, term)]: x is held, so ``is`` cannot match a new tensor at a reused address
        base_forward = mod.forward  # the class forward: F.linear(x, W, b)

        def forward(x: torch.Tensor) -> torch.Tensor:  # x: [S, T, in] -> [S, T, out]
            out = base_forward(x)
            if memo and memo[0][0] is x:  # the same text states as the previous denoising step
                return out.add_(memo[0][1])
            if x.shape[0] != len(rows):
                raise CNSError(  # a caller's layout bug, not the user's input: a 500
                    f"the UNet batch at {name} has {x.shape[0]} samples, sample_to_state maps {len(rows)}: build the "
                    "map for this call's layout with cfg_sample_map (classifier-free guidance doubles the batch)"
                )
            term = torch.zeros_like(out)  # [S, T, out]: every sample's c dW^T
            for s, k in enumerate(rows):
                d = gathers[k].get(name)
                if d is not None:
                    add_sample_delta(term[s], x[s], d)
            memo[:] = [(x, term)]
            return out.add_(term)

        return forward

    names = sorted({n for g in gathers for n in g})
    return {n: forward_for(n, modules[n]) for n in names}


# -------------------------------------------------------------------- trainable: the learners
def _trainable_forwards(modules: Mapping[str, nn.Module], plan: Trainable) -> dict[str, Callable]:
    from cns_ray.learn.sparse_linear import SparseDeltaLinear

    problems = []
    for n, w in plan.start.items():
        mod = modules.get(n)
        if mod is None:
            problems.append(f"{n!r} is not a target layer of this UNet (it has {len(modules)})")
        elif tuple(w.shape) != tuple(mod.weight.shape):
            problems.append(f"{n!r} weight has shape {tuple(w.shape)}, the layer's is {tuple(mod.weight.shape)}")
    problems += [f"{n!r} has sparse values but no start weight" for n in plan.sparse if n not in plan.start]
    if problems:
        raise InputError("cannot route the target layers: " + "; ".join(problems) + ": pass weights made for this base")

    def forward_for(w: torch.Tensor, bias: torch.Tensor | None, sparse) -> Callable:
        if sparse is None:
            return lambda x: F.linear(x, w, bias)
        idx, values = sparse
        return lambda x: SparseDeltaLinear.apply(x, w, bias, idx, values)

    return {n: forward_for(w, modules[n].bias, plan.sparse.get(n)) for n, w in plan.start.items()}


# -------------------------------------------------------------------- placeholder rows of the text encoder's input
def placeholder_slots(ids: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
    """``slots [B, T]`` for :func:`spliced_embeddings`: ``k`` where ``ids`` hold ``token_ids[k]``, else -1."""
    slots = torch.full_like(ids, -1)  # [B, T]
    for k, t in enumerate(token_ids):
        slots = torch.where(ids == t, k, slots)
    return slots


@contextmanager
def spliced_embeddings(text_encoder: nn.Module, slots: torch.Tensor, vectors: Sequence[torch.Tensor]) -> Iterator[None]:
    """While active, the text encoder's input embedding at ``[b, t]`` is ``vectors[slots[b, t]]`` where that is
    ``>= 0`` (``slots``: int64 ``[B, T]``; ``vectors``: ``[D]`` each, differentiable: the learner's token), and the
    table's row elsewhere. For one call: the hook is removed on exit, error or cancel; the table is never written.
    """
    if not vectors:
        yield
        return
    emb = text_encoder.get_input_embeddings()
    dim = emb.weight.shape[1]
    bad = [f"vector {k} has shape {tuple(v.shape)}" for k, v in enumerate(vectors) if v.dim() != 1 or v.shape[0] != dim]
    if bad:
        raise InputError(f"{'; '.join(bad)}, the text encoder's embeddings are [{dim}]: pass vectors of this base")

    def hook(_module, _inputs, out):  # out: [B, T, D]
        if tuple(out.shape[:2]) != tuple(slots.shape):
            raise CNSError(f"the text batch is {tuple(out.shape[:2])} (samples, tokens), the placeholder slots are "
                             f"{tuple(slots.shape)}: build the slots from this call's ids")
        where = slots.to(out.device)
        for k, vec in enumerate(vectors):
            out = torch.where((where == k).unsqueeze(-1), vec.to(out.dtype), out)  # [B, T, D]
        return out

    handle = emb.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
