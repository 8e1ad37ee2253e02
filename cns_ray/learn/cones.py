"""The Cones learner: finds one concept's neurons by gradient statistics; learns no values and no embedding.

For ``steps`` steps, on a batch of the concept's images captioned with its prompt, the diffusion loss ``L_con`` is
back-propagated to every target K/V weight (dense leaf copies of the tenant's current weights, the
:class:`~cns_ray.layers.Trainable` plan of :func:`cns_ray.layers.target_layers`: the shared UNet is never written) and ``W * dL_con/dW`` is
summed per layer (:func:`cns_ray.cones.accumulate_scores`). The result is the selection rule of
:mod:`cns_ray.cones` over that sum: a concept made of indices only (``method="cones"``).

**Token.** No embedding is learned (as in the paper). The concept still has a placeholder (``<name>``), used only
as a key: a prompt that names ``<name>`` gets the concept's neurons shut, and the placeholder itself is dropped
from the text before encoding (``"a photo of <rex> dog"`` is encoded as ``"a photo of dog"``). So the captions the
loss uses are the concept's captions without the placeholder, exactly what serving encodes for such a prompt.

The scores are taken at the weights the tenant's prompts run with (``W_base + delta_CNS``); shutting sets those to
zero, which serving does by writing ``-W`` on top (cns_ray/serve/swap.py: a shut weight is zero whatever the CNS
delta says). Randomness is seeded from ``(seed, rank, step)`` as in :class:`~cns_ray.learn.learner.CNSLearner`, so
a run resumed from :meth:`ConesLearner.state_dict` accumulates the same sum.

**Joint refinement** (``cfg.cones_joint``, the paper's optional few-step fine-tuning for multi-subject images, in an
index-only form). The paper follows concatenation with a few steps of further fine-tuning on multi-subject images;
here that stays a selection, so the store still holds no values: the run's images are multi-subject images (e.g.
the two subjects side by side) with their captions, the start weights have the **union of the named concepts'
neurons already shut**, and ``W * dL/dW`` summed over a few steps picks the extra entries whose zeroing lowers the
joint loss further (entries already shut score 0 and are never picked again). The result is a Cones record with
``stats["joint_of"]`` = the named concepts; serving adds its indices to the union whenever a prompt names every one
of them (cns_ray/serve/swap.py ``ServedTenant.delta_for``, both serving modes), and never otherwise. Deleting one of
the named concepts leaves the joint record inert (its condition can no longer hold).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import torch

from cns_ray import cones
from cns_ray.config import LearnerConfig
from cns_ray.errors import CNSError, InputError
from cns_ray.learn.data import caption_ids, mirrored_ids
from cns_ray.learn.learner import CNSLearner, ConceptRequest, _step_seed
from cns_ray.layers import Trainable, target_layers
from cns_ray.store import ConceptRecord, TenantState

log = logging.getLogger(__name__)

STATE_FORMAT = 1


class ConesLearner(CNSLearner):
    """Accumulates ``W * dL_con/dW`` over ``cfg.steps`` steps; :meth:`result` holds the selected indices."""

    def __init__(self, base, store, request: ConceptRequest, cfg: LearnerConfig, general=None, *, rank: int = 0):
        # ``general`` is accepted for the job's uniform call and unused: Cones has no general-neuron step.
        self._setup_request(base, store, request, cfg, rank)
        self.text_encoder = base.text_encoder  # read only: no token is added
        if cfg.cones_joint:  # multi-subject captions as given (they name the subjects), placeholders dropped
            from cns_ray.learn.data import list_images, read_captions, selection_caption

            raw = read_captions(list_images(request.images), request.class_word, request.captions)
            self.data.captions = [selection_caption(c) for c in raw]
        # [N, T] each: captions without the placeholder, and mirrored for flipped images
        self.input_ids, self.input_ids_mirrored = caption_ids(base.tokenizer, self.data.captions)
        self.base_weights = {n: w.detach() for n, w in base.target_weights().items()}  # live, read-only [out, in]
        self.start_weights = dict(self.base_weights)
        prev = self.state.delta.applied_to({n: self.base_weights[n].cpu() for n in self.state.delta.layers})
        self.start_weights.update({n: w.to(self.device) for n, w in prev.items()})
        self.joint_shut = self._joint_union(cfg.cones_joint)  # layer -> indices already shut (joint refinement)
        for n, idx in self.joint_shut.items():
            w = self.start_weights[n]  # [out, in]
            self.start_weights[n] = w.reshape(-1).index_fill(0, idx.to(w.device), 0).view(w.shape)
        self._leaves: dict[str, torch.Tensor] = {}
        self.scores: dict[str, torch.Tensor] = {}  # name -> float32 [out, in], summed W * grad
        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler.from_config(base.scheduler.config)
        self.step_index = 0
        self.total_steps = cfg.steps
        self.losses: list[float] = []
        self.seconds = 0.0
        self.select_seconds = 0.0

    def _joint_union(self, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """The union of the named Cones concepts' neurons; every name checked (exists, is Cones, is not joint)."""
        if not names:
            return {}
        problems, sets = [], []
        have = sorted(c.name for c in self.state.concepts if c.method == "cones" and not c.stats.get("joint_of"))
        for name in names:
            rec = self.state.concept(name)
            if rec is None:
                problems.append(f"tenant {self.request.tenant!r} has no concept {name!r}")
            elif rec.method != "cones":
                problems.append(f"{name!r} is a {rec.method} concept, not a Cones one")
            elif rec.stats.get("joint_of"):
                problems.append(f"{name!r} is itself a joint record (of {rec.stats['joint_of']})")
            else:
                sets.append(rec.neurons)
        if problems:
            raise InputError("cones_joint: " + "; ".join(problems) + f". Name two or more of the tenant's single-subject "
                             f"Cones concepts (it has {have or 'none'}), learned before this run")
        return cones.union(sets)

    def _patched_unet(self):
        """Every target linear runs with a dense leaf copy of its current weight, so backward fills its grad."""
        self._leaves = {n: w.detach().clone().requires_grad_(True) for n, w in self.start_weights.items()}
        return target_layers(self.base.unet, Trainable(self._leaves))

    def _text_states(self, ids: torch.Tensor) -> torch.Tensor:
        """The base text encoder's last hidden state ``[B, T, D]``: no placeholder (it was dropped from the text)."""
        return self.text_encoder(ids.to(self.device))[0]

    def trainable_tensors(self) -> list[torch.Tensor]:
        return []

    def step(self, grad_sync: Callable[[list[torch.Tensor]], None] | None = None) -> float:
        """One score-accumulation step; ``grad_sync(grads)`` averages the dense grads across data-parallel workers."""
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(_step_seed(self.cfg.seed, self.rank, self.step_index))
        pick = torch.randint(0, len(self.data), (self.cfg.batch_size,), generator=gen)  # [B]
        pixels, flips = self.data.batch_and_flips(pick, gen, self.cfg.augment)  # [B, 3, R, R], [B]
        loss = self._noise_loss(pixels, mirrored_ids(self.input_ids[pick], self.input_ids_mirrored[pick], flips), gen)
        loss.backward()
        names = sorted(self._leaves)
        grads = [self._leaves[n].grad if self._leaves[n].grad is not None else torch.zeros_like(self._leaves[n]) for n in names]
        if grad_sync is not None:
            grad_sync(grads)
        cones.accumulate_scores(self.scores, self.start_weights, dict(zip(names, grads)))
        self._leaves = {}
        self.step_index += 1
        value = float(loss.detach())
        self.losses.append(value)
        self.seconds += time.perf_counter() - t0
        return value

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "format": STATE_FORMAT, "method": "cones", "tenant": self.request.tenant, "concept": self.request.concept,
            "token": self.token, "parent_version": self.parent_version, "joint_of": list(self.cfg.cones_joint),
            "step_index": self.step_index,
            "scores": {n: s.cpu().clone() for n, s in self.scores.items()}, "losses": list(self.losses),
            "seconds": self.seconds,
        }

    def load_state_dict(self, d: dict) -> None:
        problems = []
        for key, mine in (("format", STATE_FORMAT), ("method", "cones"), ("tenant", self.request.tenant),
                          ("concept", self.request.concept), ("token", self.token), ("parent_version", self.parent_version),
                          ("joint_of", list(self.cfg.cones_joint))):
            if d.get(key, [] if key == "joint_of" else None) != mine:  # checkpoints from before joint runs: []
                problems.append(f"{key} is {d.get(key)!r} in the checkpoint but {mine!r} here")
        bad = [n for n, s in d.get("scores", {}).items()
               if n not in self.start_weights or tuple(s.shape) != tuple(self.start_weights[n].shape)]
        if bad:
            problems.append(f"scores of layers {bad} do not fit this base's target layers")
        if problems:
            raise CNSError("cannot resume from this checkpoint: " + "; ".join(problems)
                           + ". Start a fresh run, or pin parent_version to the checkpoint's")
        self.scores = {n: s.to(self.device) for n, s in d["scores"].items()}
        self.step_index = int(d["step_index"])
        self.losses = list(d["losses"])
        self.seconds = float(d["seconds"])

    # ------------------------------------------------------------------ result
    def neurons(self) -> dict[str, torch.Tensor]:
        """The selected indices per layer (sorted unique int64, CPU)."""
        t0 = time.perf_counter()
        out = cones.select_neurons({n: s.cpu() for n, s in self.scores.items()}, self.cfg.cones_ratio)
        self.select_seconds = time.perf_counter() - t0
        return out

    @torch.no_grad()
    def result(self) -> TenantState:
        """The tenant's new state: its delta and tokens unchanged, plus an index-only concept record."""
        neurons = self.neurons()
        if not neurons:
            log.warning("Cones concept %r: no weight has a positive score; it shuts nothing", self.request.concept)
        if self.joint_shut:  # never re-selected (their score is 0); dropped here too for a clean record
            neurons = {n: i[~torch.isin(i, self.joint_shut[n].cpu())] if n in self.joint_shut else i
                       for n, i in neurons.items()}
            neurons = {n: i for n, i in neurons.items() if i.numel()}
        stats = self.stats(neurons)
        if self.cfg.cones_joint:
            stats["joint_of"] = list(self.cfg.cones_joint)
        record = ConceptRecord(name=self.request.concept, token=self.token, class_word=self.request.class_word,
                               neurons=neurons, method="cones", stats=stats,
                               shapes={n: tuple(self.base_weights[n].shape) for n in neurons})
        return TenantState(tenant=self.request.tenant, base_id=self.base.base_id, delta=self.state.delta,
                           tokens=dict(self.state.tokens), concepts=[*self.state.concepts, record])

    def stats(self, neurons: dict[str, torch.Tensor] | None = None) -> dict:
        neurons = self.neurons() if neurons is None else neurons
        total = sum(w.numel() for w in self.base_weights.values())
        nnz = int(sum(i.numel() for i in neurons.values()))
        tail = self.losses[-10:]
        return {
            "method": "cones", "steps": self.step_index, "n_images": len(self.data), "seconds": round(self.seconds, 3),
            "initial_loss": self.losses[0] if self.losses else None,
            "final_loss_mean10": sum(tail) / len(tail) if tail else None,
            "nnz": nnz, "density": nnz / max(total, 1), "cones_ratio": self.cfg.cones_ratio,
            "parent_version": self.parent_version,
        }
