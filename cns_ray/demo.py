"""``cns demo``: the whole system on the embedded defaults, end to end, in one command.

The concepts are instances of the toy world's known classes that the base model never saw as a whole
(cns_ray/world/concepts.py: a class such as "circle" with its own look, e.g. striped red and yellow with a green dot;
6 reference images in varied contexts), written as image folders with the captions a user would write
(``a large <rex> circle at the left on a grey background``), the layout ``cns learn`` reads; each folder also holds
6 photos of the concept beside another object of its class that the caption describes (``a small plain blue circle
at the left and a small <rex> circle at the right on a ... background``: what lets a concept be drawn second in a
two-concept prompt, docs/method-notes.md).

1. calibrate: general neurons of the base over its calibration prompts (the toy-world model ships 20 world
   captions), sharded over Ray scorer actors (cached in the store);
2. select: concept neurons of the first concept, printed per layer;
3. learn: two concepts for each of two tenants, continually (each tenant's concepts in order, tenants in parallel)
   through the learning scheduler and Ray Train;
4. before/after grids: each tenant's prompts generated at every version (the first row: the target, the concepts
   drawn by the world's renderer in each prompt's scene; the second: the base drawing the prompts without the concept
   tokens), written as PNG beside the concepts' reference images (``concepts.png``),
   and each tenant's two-concept prompts at its final version (``{tenant}_two_concepts.png``: a row per order, the
   later concept first, then the earlier first; the target, then 4 seeds);
5. serve: the Ray Serve endpoint on 127.0.0.1, each tenant's concepts and a two-concept prompt generated over HTTP
   with that tenant's API key; images written as PNG.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cns_ray.config import LearnerConfig, SelectionConfig, StoreConfig

# tenant -> its concepts, learned in this order (held-out toy-world concepts, cns_ray.world.concepts)
DEMO_TENANTS: dict[str, tuple[str, ...]] = {"acme": ("rex", "zed"), "bravo": ("mia", "ivo")}
"""``acme`` learns two circles (the second must not overwrite the first), ``bravo`` a square and a triangle."""
DEMO_GUIDANCE = 4.0
"""Classifier-free guidance of the demo's images (the toy-world model was evaluated at 4)."""


@dataclass(frozen=True)
class DemoConfig:
    """What ``cns demo`` does."""

    out_dir: str = "cns-out"
    """Output folder: images, and the demo's own store under ``store/`` unless ``store`` is given."""
    store: str | None = None
    """Concept store URI; None = ``{out_dir}/store``, emptied at the start so the demo can run again."""
    base_model: str = "tiny"
    """Base model spec."""
    steps: int = LearnerConfig.steps
    """Learning steps per concept."""
    n_ref: int = 6
    """Reference images per concept."""
    pairs: int = 6
    """Two-object references per concept besides ``n_ref``: the concept beside a described partner of its class,
    alternately right and left (:func:`cns_ray.world.concepts.reference_set`); 0 = one-object references only."""
    actors: int = 2
    """Scorer actors for calibration."""
    reg_lambda: float | None = None
    preserve_lambda: float | None = None
    """``L_reg`` and key/value-preservation weights; None = the base model's defaults (``tiny``: lambda 0.01 with the
    earlier concepts' keys/values preserved, docs/method-notes.md; ``cns demo --reg-lambda 1 --preserve-lambda 0``:
    the paper protocol's CNS, under which the token carries nearly all of a concept on ``tiny``)."""
    serve: bool = True
    """Start the HTTP endpoint and generate over HTTP at the end."""
    gen_steps: int = 20
    """Denoising steps of the demo's generations."""
    seed: int = 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _grid(rows: list[list[bytes]], path: Path) -> None:
    import io

    from PIL import Image

    ims = [[Image.open(io.BytesIO(b)).convert("RGB") for b in row] for row in rows]
    w, h = ims[0][0].size
    if w < 128:  # small models: upscale (nearest) so a person can see the pixels
        f = 128 // w
        ims = [[im.resize((w * f, h * f), Image.NEAREST) for im in row] for row in ims]
        w, h = w * f, h * f
    g = Image.new("RGB", (w * max(len(r) for r in ims), h * len(ims)), "white")
    for i, row in enumerate(ims):
        for j, im in enumerate(row):
            g.paste(im, (j * w, i * h))
    g.save(path, format="PNG")


def _pairs(concepts: tuple[str, ...]) -> list[tuple[str, str]]:
    """The two orders of a tenant's two-concept prompt: the later concept first (at the left), then the earlier."""
    return [(concepts[1], concepts[0]), (concepts[0], concepts[1])]


def _prompts(concepts: tuple[str, ...]) -> list[str]:
    """Each concept alone (large, centred), then both side by side in both orders (:func:`_pairs`), as a user writes
    them."""
    from cns_ray.world import concepts as wc

    cs = [wc.get_concept(c) for c in concepts]
    single = [wc.user_caption("large", c.token, c.shape, "center", "grey") for c in cs]
    return [*single, *(wc.pair_prompt(wc.get_concept(a), wc.get_concept(b), "grey") for a, b in _pairs(concepts))]


def _targets(concepts: tuple[str, ...], resolution: int) -> list[bytes]:
    """PNG bytes of what each of :func:`_prompts` should show: the concepts drawn by the world's renderer in the
    prompt's scene (the grids' top row, so a person compares the model's images with their target at a glance)."""
    import io

    from PIL import Image

    from cns_ray.world import concepts as wc
    from cns_ray.world.render import render_scene

    cs = [wc.get_concept(c) for c in concepts]
    scenes = [wc.concept_scene(c, "large", "center", "grey") for c in cs] + [
        wc.pair_scene(wc.get_concept(a), wc.get_concept(b), "grey") for a, b in _pairs(concepts)]
    out = []
    for scene in scenes:
        buf = io.BytesIO()
        Image.fromarray(render_scene(scene, resolution)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _without_tokens(prompt: str, concepts: tuple[str, ...]) -> str:
    from cns_ray.world import concepts as wc

    return wc.class_prompt(prompt, [wc.get_concept(c).token for c in concepts])


def write_concepts(cfg: DemoConfig, out: Path) -> dict[str, tuple[Path, str]]:
    """Every demo concept's reference folder (PNG + captions.txt) under ``out/concepts``, and ``concepts.png``."""
    import numpy as np
    from PIL import Image

    from cns_ray.world import concepts as wc

    folders, rows = {}, []
    for names in DEMO_TENANTS.values():
        for name in names:
            c = wc.get_concept(name)
            folder = wc.write_reference_folder(c, out / "concepts" / name, cfg.n_ref, cfg.seed, cfg.pairs)
            folders[name] = (folder, c.class_word)
            tiles = [np.pad(im, ((1, 1), (1, 1), (0, 0)))
                     for im in wc.reference_set(c, cfg.n_ref, cfg.seed, pairs=cfg.pairs)[0]]
            rows.append(np.concatenate(tiles, axis=1))  # [R+2, n*(R+2), 3]: a black line between tiles
    sheet = Image.fromarray(np.concatenate(rows, axis=0))
    sheet.resize((sheet.width * 4, sheet.height * 4), Image.NEAREST).save(out / "concepts.png", format="PNG")
    return folders


def run_demo(cfg: DemoConfig, say: Callable[[str], None] = print) -> dict:
    """Run the demo; returns a summary (versions, files). ``say`` prints progress lines."""
    from cns_ray.jobs.calibrate import general_masks_info, select_for_concept
    from cns_ray.jobs.ray_env import init_ray
    from cns_ray.models import load_base_model
    from cns_ray.neurons import mask_fraction
    from cns_ray.store import ConceptStore

    out = Path(cfg.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    store_uri = cfg.store or str(out / "store")
    if cfg.store is None and Path(store_uri).exists():
        shutil.rmtree(store_uri)
    store = ConceptStore(StoreConfig(uri=store_uri))
    t0 = time.time()
    examples = write_concepts(cfg, out)

    say(f"[1/5] Ray on 127.0.0.1; base model {cfg.base_model!r}; store {store_uri}")
    started = init_ray(None, namespace="cns") == "local"
    base = load_base_model(cfg.base_model)
    sel = SelectionConfig()
    info = general_masks_info(base, store, sel, num_actors=cfg.actors, progress=lambda d, t: say(f"      calibration shard {d}/{t} scored"))
    say(
        f"      general neurons: {mask_fraction(info.masks):.1%} of {sum(m.numel() for m in info.masks.values()):,} target "
        f"weights at select_ratio={sel.select_ratio} ({'from cache' if info.from_cache else f'{cfg.actors} scorer actors'})"
    )

    first = DEMO_TENANTS["acme"][0]
    folder, word = examples[first]
    from cns_ray.learn.data import selection_caption

    captions = [selection_caption(c) for c in (folder / "captions.txt").read_text().splitlines()]
    s = select_for_concept(base, store, captions, sel, num_actors=0)
    say(f"[2/5] concept neurons of '{first}' ({len(captions)} images in {folder}, class word '{word}'):")
    for name, m in s.concept.items():
        say(f"      {name:<62} {int(m.sum()):>5} / {m.numel():>5}")
    say(f"      total {int(s.summary()['concept_count'])} = {s.summary()['concept_fraction']:.2%} of the target weights")

    say(f"[3/5] learning {sum(len(c) for c in DEMO_TENANTS.values())} concepts, {cfg.steps} steps each, via the scheduler")
    versions = _learn_all(cfg, store_uri, examples, say)

    say("[4/5] before/after grids (rows: target, base, after concept 1, after concept 2; columns: the prompts)")
    files = [out / "concepts.png", *_grids(cfg, base, store, out, say)]
    say(f"      {out / 'concepts.png'}  (the concepts' reference images, one row each: {', '.join(examples)})")

    if cfg.serve:
        say("[5/5] serving over HTTP on 127.0.0.1")
        files += _serve_and_generate(cfg, store_uri, out, say)
    if started:  # leave a Ray this process was already connected to as it was
        import ray

        ray.shutdown()
    say(f"done in {time.time() - t0:.0f} s; images in {out}")
    return {"versions": versions, "files": [str(f) for f in files], "store": store_uri}


def _learn_all(cfg: DemoConfig, store_uri: str, examples: dict, say) -> dict[str, list[int]]:
    import ray

    from cns_ray.jobs.scheduler import get_or_create_scheduler

    sched = get_or_create_scheduler(store_uri, cfg.base_model, name=f"cns-demo-{int(time.time())}")
    lcfg = LearnerConfig(steps=cfg.steps, checkpoint_every=max(cfg.steps // 2, 1), cpus_per_worker=0.5, seed=cfg.seed,
                         reg_lambda=cfg.reg_lambda, preserve_lambda=cfg.preserve_lambda,
                         augment=False)  # a flip would swap 'left' and 'right' in the world's captions
    jobs = []
    for tenant, concepts in DEMO_TENANTS.items():
        for c in concepts:
            folder, word = examples[c]
            req = {"tenant": tenant, "concept": c, "class_word": word, "images": str(folder)}
            jobs.append(ray.get(sched.submit.remote(req, lcfg.to_dict())))
    last = ""
    while True:
        st = [ray.get(sched.status.remote(j)) for j in jobs]
        line = "  ".join(f"{s['tenant']}/{s['concept']}:{_job_state(s)}" for s in st)
        if line != last:
            say("      " + line)
            last = line
        if all(s["state"] in ("succeeded", "failed") for s in st):
            break
        time.sleep(2)
    failed = [s for s in st if s["state"] == "failed"]
    if failed:
        raise RuntimeError("demo learning failed: " + "; ".join(f"{s['tenant']}/{s['concept']}: {s['error']}" for s in failed))
    versions: dict[str, list[int]] = {}
    for s in st:
        versions.setdefault(s["tenant"], []).append(s["version"])
    for tenant, vs in versions.items():
        say(f"      tenant {tenant}: versions {vs} ({', '.join(DEMO_TENANTS[tenant])}, in order)")
    ray.kill(sched)
    return versions


def _job_state(s: dict) -> str:
    if s["state"] != "running":
        return s["state"]
    return f"step {s['step']}/{s['total']}" if s.get("total") else "starting"


def _grids(cfg: DemoConfig, base, store, out: Path, say) -> list[Path]:
    from cns_ray.serve.swap import GenerationRequest, ServedTenant, generate_images

    weights = base.target_weights()
    files = []
    for tenant, concepts in DEMO_TENANTS.items():
        prompts = _prompts(concepts)
        states = [ServedTenant.empty(tenant, base.base_id)]
        for info in store.history(tenant):
            st = store.load(tenant, info.version, shapes=base.target_shapes(), base_id=base.base_id)
            states.append(ServedTenant.from_state(st, "cpu", base.unet.dtype))
        rows = [_targets(concepts, base.resolution)]
        for k, served in enumerate(states):
            row = []
            for p in prompts:
                req = GenerationRequest(prompt=p if k else _without_tokens(p, concepts), steps=cfg.gen_steps,
                                        seed=cfg.seed, height=base.resolution, width=base.resolution,
                                        guidance_scale=DEMO_GUIDANCE)
                row += generate_images(base, weights, served, req)
            rows.append(row)
        path = out / f"{tenant}_before_after.png"
        _grid(rows, path)
        say(f"      {path}  ({len(rows)} rows: the target (rendered), the base without the tokens, then each version; "
            f"prompts: {prompts})")
        two = out / f"{tenant}_two_concepts.png"
        pair_rows = []
        for k in (-2, -1):
            req = GenerationRequest(prompt=prompts[k], steps=cfg.gen_steps, seed=cfg.seed, height=base.resolution,
                                    width=base.resolution, guidance_scale=DEMO_GUIDANCE, n=4)
            pair_rows.append([rows[0][k], *generate_images(base, weights, states[-1], req)])
        _grid(pair_rows, two)
        say(f"      {two}  (a row per order, the target then 4 seeds: {prompts[-2]!r}; {prompts[-1]!r})")
        files += [path, two]
    return files


def _serve_and_generate(cfg: DemoConfig, store_uri: str, out: Path, say) -> list[Path]:
    from ray import serve

    from cns_ray.serve.app import build_app
    from cns_ray.serve.auth import hash_key, new_key
    from cns_ray.serve.config import ServingConfig

    keys = {tenant: new_key(tenant) for tenant in DEMO_TENANTS}
    port = _free_port()
    scfg = ServingConfig(
        store=store_uri,
        base_model=cfg.base_model,
        api_keys={hash_key(k): t for t, k in keys.items()},
        read_env_keys=False,
        default_steps=cfg.gen_steps,
        default_guidance=DEMO_GUIDANCE,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(scfg), name="cns", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    say(f"      endpoint {url} (one key per tenant)")
    files = []
    try:
        for tenant, concepts in DEMO_TENANTS.items():
            for i, prompt in enumerate(_prompts(concepts)):
                body = json.dumps({"prompt": prompt, "seed": cfg.seed, "steps": cfg.gen_steps}).encode()
                req = urllib.request.Request(
                    f"{url}/v1/images/generations",
                    data=body,
                    headers={"Authorization": f"Bearer {keys[tenant]}", "Content-Type": "application/json"},
                )
                t = time.time()
                with urllib.request.urlopen(req, timeout=300) as r:
                    reply = json.loads(r.read())
                path = out / f"{tenant}_http_{i}.png"
                path.write_bytes(base64.b64decode(reply["data"][0]["b64_json"]))
                say(f"      POST /v1/images/generations {tenant!r} {prompt!r} -> {path.name} ({time.time() - t:.2f} s)")
                files.append(path)
    finally:
        serve.shutdown()
    return files
