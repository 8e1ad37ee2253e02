"""The CNS learner: one concept of one tenant, continually on top of the tenant's current state.

Trainable state is only (a) the new placeholder token's embedding, a ``[D]`` vector spliced into the input
embeddings of a private copy of the text encoder for each forward (:func:`cns_ray.layers.spliced_embeddings`, the
splice serving uses), and (b) per target layer a values vector on the concept's selected entries. The shared base
UNet is never written: for the duration of the learner's forward its target linears run the
:class:`~cns_ray.layers.Trainable` plan of :func:`cns_ray.layers.target_layers`, i.e.
:class:`~cns_ray.learn.sparse_linear.SparseDeltaLinear`, ``F.linear(x, W_start.index_put(selected, values))`` with
the patched weight built only transiently per layer (no dense weight copies held between forward and backward), so
gradients reach only the values vectors and Adam state exists only for them. ``W_start`` is the tenant's current
weights ``W_base + delta^(m-1)``. (The plan sets an instance ``forward`` on the target modules for one forward,
without writing their weights: do not run another forward of the same UNet object from another thread meanwhile.)

The loss is the diffusion loss plus ``reg_lambda * L_reg`` and, when ``preserve_lambda > 0``, the K/V change on the
tenant's earlier concepts' prompts (:meth:`CNSLearner.preserved_prompts`, one Gram matrix fixed at set-up:
:func:`cns_ray.learn.regularizer.kv_preservation`).

Randomness (image sampling, augmentation, VAE sampling, noise, timesteps) is drawn from a generator seeded from
``(cfg.seed, rank, step_index)``, so resuming from :meth:`CNSLearner.state_dict` repeats a run exactly.
"""

from __future__ import annotations

import copy
import logging
import re
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cns_ray import select
from cns_ray.config import LearnerConfig
from cns_ray.delta import SparseDelta
from cns_ray.errors import CNSError, InputError, NotFoundError
from cns_ray.learn.data import ConceptData, caption_ids, load_concept, mirrored_ids
from cns_ray.learn.regularizer import kv_preservation, l_reg, overlap_mask, reg_targets, text_gram
from cns_ray.layers import Trainable, placeholder_slots, spliced_embeddings, target_layers
from cns_ray.models.text import add_placeholder_token, register_placeholders
from cns_ray.neurons import Masks, indices_to_mask, mask_to_indices
from cns_ray.store import ConceptRecord, TenantState, validate_name, validate_token

log = logging.getLogger(__name__)

STATE_FORMAT = 1
Progress = Callable[[int, int, float], None]


@dataclass
class ConceptRequest:
    """One concept to learn for one tenant."""

    tenant: str
    concept: str
    class_word: str
    images: str
    """Folder of png/jpg/jpeg/webp images."""
    token: str | None = None
    """Placeholder token; ``None`` -> ``f"<{concept}>"``."""
    captions: list[str] | None = None
    """One per image (file-name order); else captions.txt / per-image .txt, else ``"a photo of a {class_word}"``."""
    parent_version: int | None = None
    """Tenant version to start from; ``None`` = the tenant's head when the learner starts (or the base)."""

    def __post_init__(self) -> None:
        if self.token is None:
            self.token = f"<{self.concept}>"


def _step_seed(seed: int, rank: int, step: int, stream: int = 0) -> int:
    """Seed of one step; ``stream`` 1 = the token warm-up's steps (0 keeps the training steps' seeds as they were)."""
    key = [seed, rank, step] + ([stream] if stream else [])
    return int(np.random.SeedSequence(key).generate_state(1, dtype=np.uint64)[0] >> 1)


class CNSLearner:
    """Learns ``request`` on top of the tenant's state; :meth:`commit` writes the new version."""

    def __init__(
        self, base, store, request: ConceptRequest, cfg: LearnerConfig, general: Masks | None = None, *, rank: int = 0,
        masks: Masks | None = None,
    ):
        self.explicit_masks = masks
        """Train exactly these entries (name -> bool [out, in]) instead of CNS's selection: baselines (cns_ray.eval)."""
        self._setup_request(base, store, request, cfg, rank)
        self._setup_text()
        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler.from_config(base.scheduler.config)
        self._setup_weights(general)
        params = [{"params": [self.token_embedding], "lr": cfg.token_lr}]
        if self.values:
            params.append({"params": list(self.values.values()), "lr": cfg.weight_lr})
        self.optimizer = torch.optim.Adam(params)
        self.step_index = 0
        self.total_steps = cfg.steps
        self.losses: list[float] = []
        self.seconds = 0.0

    # ------------------------------------------------------------------ setup
    def _start_state(self) -> tuple[TenantState, int | None]:
        req, shapes = self.request, self.base.target_shapes()
        version = req.parent_version if req.parent_version is not None else self.store.head(req.tenant)
        if version is None:
            return TenantState.empty(req.tenant, self.base.base_id), None
        try:
            state = self.store.load(req.tenant, version, shapes=shapes, base_id=self.base.base_id)
        except NotFoundError as e:
            known = [v.version for v in self.store.history(req.tenant)]
            raise NotFoundError(
                f"tenant {req.tenant!r} has no version {version} (versions: {known or 'none'}): "
                "give an existing parent version, or none to start from the head"
            ) from e
        return state, version

    def _check_new(self) -> None:
        problems = []
        if self.state.concept(self.request.concept) is not None:
            problems.append(
                f"tenant {self.request.tenant!r} already has concept {self.request.concept!r}: "
                "choose another name, or delete it first"
            )
        if self.token in self.state.tokens or any(c.token == self.token for c in self.state.concepts):  # Cones: no embedding
            problems.append(f"token {self.token!r} is already used by tenant {self.request.tenant!r}: choose another token")
        if self.token in self.base.tokenizer.get_vocab():
            problems.append(f"token {self.token!r} already exists in the base tokenizer: choose a new one, e.g. '<{self.request.concept}-x>'")
        if problems:
            raise InputError("; ".join(problems))

    def _setup_request(self, base, store, request: ConceptRequest, cfg: LearnerConfig, rank: int) -> None:
        """Names checked, the tenant's current state and parent version, the concept's images and captions."""
        self.base, self.store, self.request, self.cfg, self.rank = base, store, request, cfg, rank
        self.token: str = request.token  # set by ConceptRequest.__post_init__
        validate_name(request.tenant, "tenant")
        validate_name(request.concept, "concept")
        validate_token(self.token)
        self.state, self.parent_version = self._start_state()
        self._check_new()
        self.device = base.unet.device
        self.data: ConceptData = load_concept(
            request.images, request.class_word, self.token, cfg.resolution or base.resolution, request.captions, cfg.augment
        )

    def _setup_text(self) -> None:
        """Private tokenizer + text encoder with the tenant's earlier tokens and the new one."""
        self.tokenizer = copy.deepcopy(self.base.tokenizer)
        self.text_encoder = copy.deepcopy(self.base.text_encoder).requires_grad_(False)
        if self.state.tokens:  # earlier tokens at their stored embeddings, in one resize, so captions may use them
            register_placeholders(self.tokenizer, list(self.state.tokens))
            self.text_encoder.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
            table = self.text_encoder.get_input_embeddings().weight  # [V, D]
            with torch.no_grad():
                for tok, emb in self.state.tokens.items():
                    table[self.tokenizer.convert_tokens_to_ids(tok)] = emb.to(table.device, table.dtype)
        self.token_id = add_placeholder_token(self.tokenizer, self.text_encoder, self.token, self.request.class_word)
        init = self.text_encoder.get_input_embeddings().weight[self.token_id].detach().float().clone()
        self.token_embedding = torch.nn.Parameter(init)  # [D]
        self.input_ids, self.input_ids_mirrored = caption_ids(self.tokenizer, self.data.train_captions)  # [N, T] each
        for table in (self.input_ids, self.input_ids_mirrored):
            if not bool((table == self.token_id).any(dim=1).all()):
                raise InputError(f"a training caption lost the token {self.token!r} to truncation: shorten the captions")

    def _setup_weights(self, general: Masks | None) -> None:
        base, sel_cfg = self.base, self.cfg.selection
        self.base_weights = {n: w.detach() for n, w in base.target_weights().items()}  # live, read-only [out, in]
        self.start_weights = dict(self.base_weights)
        prev = self.state.delta.applied_to({n: self.base_weights[n].cpu() for n in self.state.delta.layers})
        self.start_weights.update({n: w.to(self.device) for n, w in prev.items()})  # W^(m-1) on the delta's layers
        earlier: dict[str, list[torch.Tensor]] = {}
        for rec in self.state.concepts:
            for n, idx in rec.neurons.items():
                earlier.setdefault(n, []).append(idx.long())
        self.indices: dict[str, torch.Tensor] = {}
        self.values: dict[str, torch.nn.Parameter] = {}
        self.reg_target: dict[str, torch.Tensor] = {}
        self.start_values: dict[str, torch.Tensor] = {}
        self.overlap_count = 0
        self._override = sorted(self.state.delta.layers)  # until selection: the token warm-up runs on W^(m-1)
        t0 = time.perf_counter()
        if self.explicit_masks is not None:
            masks = self.explicit_masks
            none = {n: torch.zeros_like(m, dtype=torch.bool) for n, m in masks.items()}
            self.selection = select.Selection(base=masks, general=none, concept=masks)
        else:
            if general is None:
                general = select.general_masks_local(base, select.load_prompts(base=base), sel_cfg)
            t0 = time.perf_counter()
            norms = self._warm_up_token() if sel_cfg.token_warmup else None
            held = None
            if sel_cfg.exclusive:
                shapes = base.target_shapes()
                held = {n: indices_to_mask(torch.cat(ix).cpu(), tuple(shapes[n])) for n, ix in earlier.items()}
            self.selection = select.select_concept(base, self.data.captions, general, sel_cfg, norms=norms, held=held)
        self.select_seconds = time.perf_counter() - t0
        for n, mask in self.selection.concept.items():
            idx = mask_to_indices(mask.cpu()).to(self.device)  # [nnz] int64, sorted
            if idx.numel() == 0:
                continue
            start = self.start_weights[n].reshape(-1).index_select(0, idx).float()  # [nnz]
            pre = self.base_weights[n].reshape(-1).index_select(0, idx).float()  # [nnz]
            prev_idx = torch.unique(torch.cat(earlier[n])) if n in earlier else None
            ov = overlap_mask(idx, prev_idx)
            self.overlap_count += int(ov.sum())
            self.indices[n] = idx
            self.values[n] = torch.nn.Parameter(start.clone())
            self.start_values[n] = start
            self.reg_target[n] = reg_targets(start, pre, ov)
        # layers the forward must override: changed by earlier concepts or trained now
        self._override = sorted(set(self.state.delta.layers) | set(self.indices))
        if not self.indices:
            log.warning("concept %r selected no neurons; only its token embedding is learned", self.request.concept)
        self._shapes = base.target_shapes()
        self.preserve_gram = self._preservation_gram() if self.cfg.preserve_lambda > 0 and self.values else None
        self.general_gram = (self._preservation_gram(select.load_prompts(base=base))
                             if self.cfg.preserve_general > 0 and self.values else None)

    def preserved_prompts(self) -> list[str]:
        """The prompts whose keys/values ``preserve_lambda`` protects: this concept's training captions with each
        earlier concept's token (and class word) in place of this one's, and the unconditional prompt (which
        classifier-free guidance runs with every prompt). Not the calibration prompts: they share the captions'
        template words, and protecting them too left no room to learn on ``tiny`` (docs/method-notes.md)."""
        own = list(self.data.train_captions)
        word = re.compile(rf"\b{re.escape(self.request.class_word)}\b")
        out: list[str] = []
        for rec in self.state.concepts:
            if rec.token not in self.state.tokens:  # Cones: no embedding, nothing it produces through the text
                continue
            for c in own:
                c = c.replace(self.token, rec.token)
                out.append(word.sub(rec.class_word, c) if rec.class_word != self.request.class_word else c)
        return [*out, ""]

    @torch.no_grad()
    def _preservation_gram(self, prompts: list[str] | None = None) -> torch.Tensor:
        """``[D, D]`` Gram of the preserved prompts' text rows (every position, padding included, as the UNet sees
        them), earlier tokens at their stored embeddings; ``prompts``: others than :meth:`preserved_prompts`. Fixed
        for the run (nothing it reads is trained)."""
        texts = self.preserved_prompts() if prompts is None else prompts
        ids = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids  # [P, T]
        hidden = self.text_encoder(ids.to(self.device))[0]  # [P, T, D]
        return text_gram(hidden)

    def _warm_up_token(self) -> torch.Tensor:
        """``selection.token_warmup`` steps learning only the token embedding (the UNet at ``W^(m-1)``, its own Adam,
        seeds of their own), then the training captions' feature norms ``[N, D]`` with that embedding spliced in: the
        norms token-informed selection scores. Deterministic, so a resumed run selects the same neurons."""
        from cns_ray.neurons import feature_norms

        opt = torch.optim.Adam([self.token_embedding], lr=self.cfg.token_lr)
        for k in range(self.cfg.selection.token_warmup):
            gen = torch.Generator().manual_seed(_step_seed(self.cfg.seed, self.rank, k, stream=1))
            pick = torch.randint(0, len(self.data), (self.cfg.batch_size,), generator=gen)  # [B]
            opt.zero_grad(set_to_none=True)
            pixels, flips = self.data.batch_and_flips(pick, gen, self.cfg.augment)  # [B, 3, R, R], [B]
            self._noise_loss(pixels, mirrored_ids(self.input_ids[pick], self.input_ids_mirrored[pick], flips), gen).backward()
            opt.step()
        mask = self.tokenizer(  # [N, T], 1 = real token: as encode_prompts scores any caption
            self.data.train_captions, padding="max_length", max_length=self.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).attention_mask
        with torch.no_grad():
            hidden = self._text_states(self.input_ids).cpu()  # [N, T, D]
        return feature_norms(hidden, mask.long())

    # ------------------------------------------------------------------ training
    def trainable_tensors(self) -> list[torch.Tensor]:
        """The only tensors with gradients: the token embedding, then the values vectors in layer order."""
        return [self.token_embedding, *self.values.values()]

    def current_weights(self) -> dict[str, torch.Tensor]:
        """The weights the UNet runs with, for the overridden layers: name -> [out, in] (differentiable in values).

        Dense copies: for :meth:`result` and inspection; the training forward does not build these."""
        out = {}
        for n in self._override:
            w = self.start_weights[n]
            if n in self.values:
                flat = w.reshape(-1).index_put((self.indices[n],), self.values[n].to(w.dtype))
                w = flat.view(w.shape)
            out[n] = w
        return out

    def _patched_unet(self):
        """Context: the UNet's overridden target linears run with ``W_start`` (+ values on the concept neurons)."""
        return target_layers(self.base.unet, Trainable(
            {n: self.start_weights[n] for n in self._override},
            {n: (self.indices[n], self.values[n]) for n in self._override if n in self.values},
        ))

    def _text_states(self, ids: torch.Tensor) -> torch.Tensor:
        """The private text encoder's last hidden state ``[B, T, D]`` for ``ids [B, T]``, the placeholder's rows
        spliced with the trainable token embedding (so its grad reaches it)."""
        with spliced_embeddings(self.text_encoder, placeholder_slots(ids, [self.token_id]), [self.token_embedding]):
            return self.text_encoder(ids.to(self.device))[0]

    def _noise_loss(self, pixels: torch.Tensor, ids: torch.Tensor, gen: torch.Generator, t: torch.Tensor | None = None) -> torch.Tensor:
        """Noise-prediction MSE. pixels [B, 3, R, R] in [-1, 1]; ids [B, T]; draws from ``gen`` (CPU)."""
        vae, unet = self.base.vae, self.base.unet
        with torch.no_grad():
            dist = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist
            eps = torch.randn(dist.mean.shape, generator=gen).to(self.device, dist.mean.dtype)
            latents = (dist.mean + dist.std * eps) * vae.config.scaling_factor  # [B, C, h, w]
        noise = torch.randn(latents.shape, generator=gen).to(self.device, latents.dtype)
        if t is None:
            t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen)
        t = t.to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        cond = self._text_states(ids)  # [B, T, D]
        with self._patched_unet():
            pred = unet(noisy.to(unet.dtype), t, encoder_hidden_states=cond.to(unet.dtype)).sample
        kind = self.noise_scheduler.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, t)
        elif kind == "sample":
            target = latents
        else:
            raise CNSError(f"scheduler prediction_type {kind!r} is not supported: use epsilon, v_prediction or sample")
        return F.mse_loss(pred.float(), target.float())

    def step(self, grad_sync: Callable[[list[torch.Tensor]], None] | None = None) -> float:
        """One optimisation step; ``grad_sync(grads)`` averages the grads in place across data-parallel workers."""
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(_step_seed(self.cfg.seed, self.rank, self.step_index))
        pick = torch.randint(0, len(self.data), (self.cfg.batch_size,), generator=gen)  # [B]
        pixels, flips = self.data.batch_and_flips(pick, gen, self.cfg.augment)  # [B, 3, R, R], [B]
        self.optimizer.zero_grad(set_to_none=False)
        diffusion = self._noise_loss(pixels, mirrored_ids(self.input_ids[pick], self.input_ids_mirrored[pick], flips), gen)
        reg = l_reg(self.values, self.reg_target) if self.values else torch.zeros((), device=self.device)
        loss = diffusion + self.cfg.reg_lambda * reg
        if self.preserve_gram is not None:
            loss = loss + self.cfg.preserve_lambda * kv_preservation(
                self.values, self.start_values, self.indices, self._shapes, self.preserve_gram)
        if self.general_gram is not None:
            loss = loss + self.cfg.preserve_general * kv_preservation(
                self.values, self.start_values, self.indices, self._shapes, self.general_gram)
        loss.backward()
        grads = []
        for p in self.trainable_tensors():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        if grad_sync is not None:
            grad_sync(grads)
        self.optimizer.step()
        self.step_index += 1
        value = float(loss.detach())
        self.losses.append(value)
        self.seconds += time.perf_counter() - t0
        return value

    @torch.no_grad()
    def concept_loss(self, timesteps: tuple[int, ...] = (100, 300, 500, 700, 900), seed: int = 1234) -> float:
        """Mean noise-prediction loss over every image (centre crop) at fixed timesteps and fixed noise."""
        gen = torch.Generator().manual_seed(seed)
        idx = torch.arange(len(self.data))
        pixels = self.data.batch(idx, None, augment=False)
        total = 0.0
        for t in timesteps:
            tt = torch.full((len(idx),), int(t), dtype=torch.long)
            total += float(self._noise_loss(pixels, self.input_ids, gen, tt))
        return total / len(timesteps)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything needed to resume exactly (CPU tensors; randomness is derived from seed, rank and step)."""
        return {
            "format": STATE_FORMAT,
            "tenant": self.request.tenant,
            "concept": self.request.concept,
            "token": self.token,
            "parent_version": self.parent_version,
            "step_index": self.step_index,
            "indices": {n: i.cpu().clone() for n, i in self.indices.items()},
            "values": {n: v.detach().cpu().clone() for n, v in self.values.items()},
            "token_embedding": self.token_embedding.detach().cpu().clone(),
            "optimizer": _to_cpu(copy.deepcopy(self.optimizer.state_dict())),
            "losses": list(self.losses),
            "seconds": self.seconds,
        }

    def load_state_dict(self, d: dict) -> None:
        """Resume from :meth:`state_dict`; refuses a checkpoint of another concept, parent or neuron selection."""
        problems = []
        for key, mine in (("format", STATE_FORMAT), ("tenant", self.request.tenant), ("concept", self.request.concept),
                          ("token", self.token), ("parent_version", self.parent_version)):
            if d.get(key) != mine:
                problems.append(f"{key} is {d.get(key)!r} in the checkpoint but {mine!r} here")
        if set(d.get("indices", {})) != set(self.indices) or any(
            not torch.equal(d["indices"][n], self.indices[n].cpu()) for n in self.indices
        ):
            problems.append("the checkpoint's concept neurons differ from this run's selection (another base, data or config)")
        if problems:
            raise CNSError(
                "cannot resume from this checkpoint: " + "; ".join(problems)
                + ". Start a fresh run, or pin parent_version to the checkpoint's"
            )
        with torch.no_grad():
            for n, v in self.values.items():
                v.copy_(d["values"][n])
            self.token_embedding.copy_(d["token_embedding"])
        self.optimizer.load_state_dict(d["optimizer"])
        self.step_index = int(d["step_index"])
        self.losses = list(d["losses"])
        self.seconds = float(d["seconds"])

    # ------------------------------------------------------------------ result
    @torch.no_grad()
    def result(self) -> TenantState:
        """The tenant's new cumulative state (not committed)."""
        new_weights = self.current_weights()
        masks = {n: indices_to_mask(i.cpu(), tuple(self.base_weights[n].shape)) for n, i in self.indices.items()}
        new = SparseDelta.from_weights(
            {n: w.cpu() for n, w in self.base_weights.items() if n in masks},
            {n: w.cpu() for n, w in new_weights.items() if n in masks},
            masks,
            self.base.base_id,
        )
        tokens = dict(self.state.tokens)
        tokens[self.token] = self.token_embedding.detach().float().cpu().clone()
        record = ConceptRecord(
            name=self.request.concept,
            token=self.token,
            class_word=self.request.class_word,
            neurons={n: i.cpu().clone() for n, i in self.indices.items()},
            method="cns",
            stats=self.stats(),
        )
        return TenantState(
            tenant=self.request.tenant,
            base_id=self.base.base_id,
            delta=self.state.delta.merge(new),
            tokens=tokens,
            concepts=[*self.state.concepts, record],
        )

    def stats(self) -> dict:
        tail = self.losses[-10:]
        return {
            "steps": self.step_index,
            "initial_loss": self.losses[0] if self.losses else None,
            "final_loss": self.losses[-1] if self.losses else None,
            "final_loss_mean10": sum(tail) / len(tail) if tail else None,
            "n_images": len(self.data),
            "seconds": round(self.seconds, 3),
            "select_seconds": round(self.select_seconds, 3),
            "nnz": int(sum(i.numel() for i in self.indices.values())),
            "overlap": self.overlap_count,
            "reg_lambda": self.cfg.reg_lambda,
            "preserve_lambda": self.cfg.preserve_lambda,
            "preserve_general": self.cfg.preserve_general,
            "parent_version": self.parent_version,
            **{k: float(v) for k, v in self.selection.summary().items()},
        }

    def commit(self) -> int:
        """Commit :meth:`result` as the tenant's next version, on top of ``parent_version``."""
        if self.step_index < self.total_steps:
            log.warning("committing %r after %d of %d steps", self.request.concept, self.step_index, self.total_steps)
        version = self.store.commit(
            self.request.tenant, self.result(), parent=self.parent_version, message=f"learn {self.request.concept}"
        )
        log.info("tenant %s: learned %s -> version %d", self.request.tenant, self.request.concept, version)
        return version


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def learn_concept(
    base, store, request: ConceptRequest, cfg: LearnerConfig, progress: Progress | None = None, general: Masks | None = None
) -> int:
    """Learn ``request`` for all ``cfg.steps`` and commit; ``progress(step, total, loss)`` after each step."""
    learner = make_learner(base, store, request, cfg, general)
    while learner.step_index < learner.total_steps:
        loss = learner.step()
        if progress is not None:
            progress(learner.step_index, learner.total_steps, loss)
    return learner.commit()


def make_learner(base, store, request: ConceptRequest, cfg: LearnerConfig, general: Masks | None = None, *, rank: int = 0):
    """The learner of ``cfg.method``: :class:`CNSLearner` or :class:`cns_ray.learn.cones.ConesLearner`."""
    if cfg.method == "cones":
        from cns_ray.learn.cones import ConesLearner

        return ConesLearner(base, store, request, cfg, general, rank=rank)
    return CNSLearner(base, store, request, cfg, general, rank=rank)
