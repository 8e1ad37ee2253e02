"""The learn route's work: check and save uploaded concept images under the store, submit a learning job.

Images go to ``{store}/uploads/{tenant}/{uuid}/NNN.png`` (re-encoded as PNG, so only decodable images are kept and
no client file name reaches a store key); the job is submitted to the per-tenant scheduler actor
(cns_ray.jobs.scheduler), which learns a tenant's concepts in order. The body's size was bounded while it streamed
(cns_ray/serve/guard.py); images are decoded on a worker thread, never on the event loop, and an image over
``max_upload_pixels`` is refused from its header, before it is decoded (decompression bombs).
"""

from __future__ import annotations

import asyncio
import io
import logging

from cns_ray.errors import ApiError, InputError
from cns_ray.serve.config import ServingConfig
from cns_ray.store.names import validate_name, validate_token
from cns_ray.store.state import METHODS

log = logging.getLogger(__name__)


def _api_error(status: int, etype: str, message: str) -> ApiError:
    return ApiError(status, etype, message)


def scheduler(cfg: ServingConfig):
    """The named scheduler actor (created on first use)."""
    try:
        from cns_ray.jobs.scheduler import get_or_create_scheduler
    except ImportError as e:
        raise _api_error(503, "learning_unavailable", f"learning jobs are not available in this deployment ({e})") from e
    return get_or_create_scheduler(cfg.store, cfg.base_model, namespace=cfg.scheduler_namespace, name=cfg.scheduler_name)


def check_images(blobs: list[tuple[str, bytes]], cfg: ServingConfig) -> list[bytes]:
    """Decode every upload; PNG bytes of each, or a clear error naming the bad file and the limits."""
    from PIL import Image, UnidentifiedImageError

    if not blobs:
        raise _api_error(422, "invalid_request", "no images: send 1 or more files in the 'images' field")
    if len(blobs) > cfg.max_upload_files:
        raise _api_error(413, "upload_too_large", f"{len(blobs)} images, the limit is {cfg.max_upload_files}: send fewer")
    total = sum(len(b) for _, b in blobs)
    if total > cfg.max_upload_bytes:
        raise _api_error(413, "upload_too_large", f"images total {total} bytes, the limit is {cfg.max_upload_bytes}: send fewer or smaller images")
    out = []
    for name, data in blobs:
        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size  # from the header: nothing decoded yet
                if w * h > cfg.max_upload_pixels:
                    raise _api_error(413, "image_too_large", f"file {name[:80]!r} is {w}x{h} = {w * h} pixels, the limit "
                                     f"is {cfg.max_upload_pixels} (max_upload_pixels): send smaller images")
                im.load()
                buf = io.BytesIO()
                im.convert("RGB").save(buf, format="PNG")
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
            raise _api_error(422, "invalid_image", f"file {name[:80]!r} is not a readable image ({e}): send PNG or JPEG files") from e
        out.append(buf.getvalue())
    return out


def save_uploads(store, tenant: str, pngs: list[bytes]) -> str:
    """Write the images under the store (``uploads/{tenant}/{id}/``, the store's layout); returns ``store:REL``
    (what the learner reads, and what the concept records as its input)."""
    return store.save_uploads(tenant, pngs)


def _learn_on_gpu(cfg: ServingConfig) -> bool:
    """Learning runs ask for a GPU per Train worker as the replicas do: ``use_gpu`` as configured, else whenever the
    cluster has or can add GPUs (cns_ray/jobs/ray_env.py)."""
    if cfg.use_gpu is not None:
        return cfg.use_gpu
    from cns_ray.jobs.ray_env import gpus_possible

    return gpus_possible() > 0


def _checked_names(concept: str, class_word: str, token: str | None) -> str:
    """The form's concept name, class word and token, checked (422 naming the field); returns the token."""
    try:
        validate_name(concept, "concept")
        token = validate_token(token if token else f"<{concept}>")
    except ValueError as e:
        raise _api_error(422, "invalid_name", str(e)) from e
    if not class_word.strip() or len(class_word) > 64:
        raise _api_error(422, "invalid_request", f"class_word {class_word[:70]!r} must be 1-64 characters, e.g. 'dog'")
    return token


MAX_CONES_JOINT = 8
"""Most concepts one ``cones_joint`` field may name (a joint record is served only when a prompt names them all)."""


def cones_joint_field(value: str | None, method: str, concept: str) -> tuple[str, ...]:
    """The form's ``cones_joint`` (``"rex,mia"``, as the CLI's ``--cones-joint A,B``) as concept names, checked:
    method ``cones``, 2 to :data:`MAX_CONES_JOINT` distinct valid names, not the concept being learned. Empty or
    absent: ``()``, an ordinary concept. Whether the tenant has those Cones concepts is checked when the job runs, on
    the head it learns on (jobs of a tenant run in order, so they may still be queued now)."""
    names = tuple(n.strip() for n in (value or "").split(",") if n.strip())
    if not names:
        return ()
    shown = (value or "")[:80]
    if method != "cones":
        raise _api_error(422, "invalid_request", f"cones_joint={shown!r} refines Cones concepts jointly and needs "
                         f"method=cones, got method={method[:20]!r}: send method=cones, or leave cones_joint out")
    try:
        for n in names:
            validate_name(n, "concept")
    except ValueError as e:
        raise _api_error(422, "invalid_name", f"cones_joint={shown!r}: {e}") from e
    problems = []
    if not 2 <= len(names) <= MAX_CONES_JOINT:
        problems.append(f"names {len(names)} concept(s), it needs 2 to {MAX_CONES_JOINT}")
    if len(set(names)) != len(names):
        problems.append("names a concept twice")
    if concept in names:
        problems.append(f"names {concept!r}, the concept being learned")
    if problems:
        raise _api_error(422, "invalid_request", f"cones_joint={shown!r} " + " and ".join(problems) + ": send the "
                         "tenant's single-subject Cones concepts to refine together, comma-separated, e.g. 'rex,mia'")
    return names


async def submit_learning(cfg: ServingConfig, store, tenant: str, images, concept: str, class_word: str, token: str | None,
                          steps: int | None, *, method: str = "cns", cones_joint: str | None = None) -> str:
    """Check the form, save the images, submit the job; ``method``: ``cns`` (default) or ``cones``; ``cones_joint``:
    ``"A,B"`` for a Cones joint refinement of those concepts (:func:`cones_joint_field`)."""
    from cns_ray.config import LearnerConfig

    if method not in METHODS or method == "synthesized":  # a synthesized concept is made by method=synthesize
        raise _api_error(422, "invalid_request", f"method={method[:20]!r} must be one of {['cns', 'cones', SYNTHESIZE]} "
                         "(default 'cns')")
    token = _checked_names(concept, class_word, token)
    joint = cones_joint_field(cones_joint, method, concept)  # before any image is read or saved
    steps = cfg.learn_steps if steps is None else steps  # still None: the base's default, filled by the learner
    if steps is not None and not 1 <= steps <= cfg.max_learn_steps:
        raise _api_error(422, "invalid_request", f"steps={steps} must be in [1, {cfg.max_learn_steps}]")
    blobs = []
    for f in images:
        blobs.append((f.filename or "image", await f.read(cfg.max_upload_bytes + 1)))
        if sum(len(b) for _, b in blobs) > cfg.max_upload_bytes:
            raise _api_error(413, "upload_too_large", f"images exceed {cfg.max_upload_bytes} bytes in total: send fewer or smaller images")
    pngs = await asyncio.to_thread(check_images, blobs, cfg)
    folder = await asyncio.to_thread(save_uploads, store, tenant, pngs)
    request = {
        "tenant": tenant,
        "concept": concept,
        "class_word": class_word.strip(),
        "images": folder,
        "token": token,
        "captions": None,
        "parent_version": None,
    }
    actor = await asyncio.to_thread(scheduler, cfg)
    try:
        lcfg = LearnerConfig(steps=steps, token_lr=None, weight_lr=None, reg_lambda=None, preserve_lambda=None,
                             use_gpu=_learn_on_gpu(cfg), method=method, cones_joint=joint)  # lrs and lambdas: the base's
        job_id = await actor.submit.remote(request, lcfg.to_dict())
    except (InputError, ValueError) as e:
        raise _api_error(422, "invalid_request", str(e)) from e
    log.info("tenant %s: submitted learning of %s (%d images%s) as job %s", tenant, concept, len(pngs),
             f", joint of {','.join(joint)}" if joint else "", job_id)
    return job_id


async def job_for_tenant(cfg: ServingConfig, tenant: str, job_id: str) -> dict:
    """A job's status, only if it belongs to ``tenant`` (404 otherwise, so other tenants' ids reveal nothing)."""
    not_found = _api_error(404, "not_found", f"tenant {tenant!r} has no job {job_id!r}: GET /v1/jobs lists its jobs")
    actor = await asyncio.to_thread(scheduler, cfg)
    try:
        status = await actor.status.remote(job_id)
    except Exception as e:  # the scheduler raises for unknown ids
        raise not_found from e
    if not status or status.get("tenant") != tenant:
        raise not_found
    return status


SYNTHESIZE = "synthesize"
"""``method=synthesize``: a zero-shot concept (cns_ray/synth/), committed within the request, no job queue."""
MAX_HTTP_REFINE_STEPS = 100
"""Most warm-started CNS steps a synthesize request runs inside the request (more: learn with method=cns)."""


class SynthService:
    """What synthesis needs, loaded on first use and kept by the ingress replica: the base (tokenizer, text encoder,
    target weights), the shipped synthesizer, the metric model's image encoder, the general masks."""

    def __init__(self, cfg: ServingConfig):
        import threading

        self.cfg = cfg
        self._lock = threading.Lock()
        self._parts = None
        self._proposers = {}  # source -> the library's proposal (read once per ingress replica)

    def parts(self, store):
        with self._lock:
            if self._parts is None:
                import torch

                from cns_ray.config import LearnerConfig
                from cns_ray.eval.metric_model import load_metric_model
                from cns_ray.jobs.calibrate import general_masks
                from cns_ray.jobs.train import resolve_learner_config
                from cns_ray.models import load_base_model
                from cns_ray.synth.synthesizer import Synthesizer, default_synth_folder

                torch.set_num_threads(1)
                base = load_base_model(self.cfg.base_model)
                synth = Synthesizer.load(default_synth_folder())
                synth.check_base(base.base_id)
                lcfg = resolve_learner_config(LearnerConfig(steps=None, token_lr=None, weight_lr=None, augment=False),
                                              self.cfg.base_model)
                self._parts = (base, synth, load_metric_model(synth.meta.get("metric", "toy")), lcfg,
                               general_masks(base, store, lcfg.selection))
            return self._parts

    def proposer(self, source: str):
        """None for ``flow`` (the synthesizer samples), else the library's ``blend`` / ``nearest`` proposal, read once
        from ``cfg.synth_library`` (or the store) and kept; an empty library is refused with the fix (InputError)."""
        if source == "flow":
            return None
        base, synth, _, _, _ = self._parts
        with self._lock:
            if source not in self._proposers:
                from cns_ray.synth.library import library_proposer

                library = self.cfg.synth_library or self.cfg.store
                self._proposers[source] = library_proposer(base, library, synth.coords, source,
                                                           synth.meta.get("metric", "toy"))
            return self._proposers[source]

    def run(self, store, tenant: str, pngs: list[bytes], concept: str, class_word: str, token: str, refine_steps: int,
            source: str = "flow") -> dict:
        import tempfile
        from pathlib import Path

        from cns_ray.learn import ConceptRequest
        from cns_ray.synth.apply import synthesize_concept

        base, synth, metric, lcfg, general = self.parts(store)
        propose = self.proposer(source)  # before the images are written: a missing library commits nothing
        with tempfile.TemporaryDirectory() as d:
            for i, data in enumerate(pngs):
                (Path(d) / f"{i:03d}.png").write_bytes(data)
            req = ConceptRequest(tenant=tenant, concept=concept, class_word=class_word, images=d, token=token)
            version, stats = synthesize_concept(base, store, req, synth, metric, lcfg, refine_steps=refine_steps,
                                                general=general, propose=propose, source=source)
        return {"tenant": tenant, "concept": concept, "method": "synthesized", "version": version,
                "seconds": stats["seconds"], "refine_steps": refine_steps, "source": source}


SOURCES = ("flow", "blend", "nearest")
"""``source`` of a ``method=synthesize`` request (cns_ray.synth.library.SOURCES; not imported: the ingress stays light)."""


def source_field(source: str | None, method: str) -> str:
    """The form's ``source``: one of :data:`SOURCES` with ``method=synthesize`` (default ``flow``), absent otherwise."""
    if source is None:
        return "flow"
    if method != SYNTHESIZE:
        raise _api_error(422, "invalid_request", f"source={source[:20]!r} picks a zero-shot proposal and needs "
                         f"method=synthesize, got method={method[:20]!r}: send method=synthesize, or leave source out")
    if source not in SOURCES:
        raise _api_error(422, "invalid_request", f"source={source[:20]!r} must be one of {list(SOURCES)} (flow: the "
                         "synthesizer; blend / nearest: the concept library's own proposal)")
    return source


async def synthesize_upload(cfg: ServingConfig, store, service: SynthService, tenant: str, images, concept: str,
                            class_word: str, token: str | None, steps: int | None, source: str = "flow") -> dict:
    """Check the form like :func:`submit_learning`, then synthesize and commit in a worker thread; ``steps``: refine
    steps (default 0); ``source``: checked by :func:`source_field`."""
    token = _checked_names(concept, class_word, token)
    refine = 0 if steps is None else steps
    if not 0 <= refine <= MAX_HTTP_REFINE_STEPS:
        raise _api_error(422, "invalid_request", f"steps={steps} with method=synthesize are refine steps, in [0, "
                         f"{MAX_HTTP_REFINE_STEPS}]: for a longer run learn with method=cns")
    blobs = []
    for f in images:
        blobs.append((f.filename or "image", await f.read(cfg.max_upload_bytes + 1)))
        if sum(len(b) for _, b in blobs) > cfg.max_upload_bytes:
            raise _api_error(413, "upload_too_large", f"images exceed {cfg.max_upload_bytes} bytes in total: send fewer or smaller images")
    pngs = await asyncio.to_thread(check_images, blobs, cfg)
    out = await asyncio.to_thread(service.run, store, tenant, pngs, concept, class_word.strip(), token, refine, source)
    log.info("tenant %s: synthesized %s (%d images) -> version %d", tenant, concept, len(pngs), out["version"])
    return out
