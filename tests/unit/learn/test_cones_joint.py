"""The optional joint refinement of concatenated Cones concepts (``cones_joint``): on multi-subject images, with the
union of the named concepts shut, a few steps of ``W * dL/dW`` pick extra neurons, stored index-only and shut by
serving only when a prompt names every one of the concepts."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from cns_ray import cones
from cns_ray.config import LearnerConfig, StoreConfig
from cns_ray.errors import ConfigError, InputError
from cns_ray.learn import ConceptRequest, make_learner
from cns_ray.store import ConceptStore
from cns_ray.world import concepts as wc
from cns_ray.world.render import render_scene
from cns_ray.world.scene import BACKGROUNDS

RATIO = 0.02


def _pair_folder(tmp_path, res: int):
    rex, mia = wc.get_concept("rex"), wc.get_concept("mia")
    folder = tmp_path / "rex_mia"
    folder.mkdir()
    caps = []
    for i, bg in enumerate(list(BACKGROUNDS)[:4]):
        Image.fromarray(render_scene(wc.pair_scene(rex, mia, bg), res)).save(folder / f"{i:02d}.png")
        caps.append(wc.pair_prompt(rex, mia, bg))
    (folder / "captions.txt").write_text("\n".join(caps) + "\n")
    return folder


@pytest.fixture(scope="module")
def joint(tiny_base, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("joint")
    store = ConceptStore(StoreConfig(uri=str(tmp / "store")))
    cfg = LearnerConfig(steps=2, batch_size=2, augment=False, seed=0, method="cones", cones_ratio=RATIO)
    for name in ("rex", "mia"):
        c = wc.get_concept(name)
        folder = wc.write_reference_folder(c, tmp / name, n=4)
        learner = make_learner(tiny_base, store, ConceptRequest("acme", name, c.shape, str(folder), token=c.token), cfg)
        while learner.step_index < learner.total_steps:
            learner.step()
        learner.commit()
    jcfg = LearnerConfig(steps=10, batch_size=4, augment=False, seed=0, method="cones", cones_ratio=RATIO,
                         cones_joint=("rex", "mia"))
    req = ConceptRequest("acme", "rex_mia", "pair", str(_pair_folder(tmp, tiny_base.resolution)))
    learner = make_learner(tiny_base, store, req, jcfg)
    while learner.step_index < learner.total_steps:
        learner.step()
    version = learner.commit()
    state = store.load("acme", version, shapes=tiny_base.target_shapes(), base_id=tiny_base.base_id)
    return {"store": store, "state": state, "learner": learner, "req": req, "cfg": jcfg}


def test_joint_record_is_index_only_and_disjoint_from_the_union(joint):
    st = joint["state"]
    rec = st.concept("rex_mia")
    assert rec.method == "cones" and rec.stats["joint_of"] == ["rex", "mia"] and rec.nnz > 0
    assert st.delta.nnz == 0 and st.tokens == {}
    union = cones.union([st.concept("rex").neurons, st.concept("mia").neurons])
    for n, idx in rec.neurons.items():
        assert not bool(torch.isin(idx, union.get(n, torch.zeros(0, dtype=torch.int64))).any()), n
        assert bool((idx[1:] > idx[:-1]).all())
    # the captions the joint loss used: the two-subject prompt without its placeholders
    assert joint["learner"].data.captions[0].startswith("a small circle at the left and a small square")


def test_serving_adds_the_joint_set_only_when_every_subject_is_named(joint, tiny_base):
    from cns_ray.serve.swap import ServedTenant

    st = joint["state"]
    served = ServedTenant.from_state(st, "cpu", torch.float32)
    assert set(served.shut) == {"<rex>", "<mia>"}  # the joint record is no placeholder of its own
    weights = tiny_base.target_weights()
    rex, mia, extra = (st.concept(n).neurons for n in ("rex", "mia", "rex_mia"))
    _, named = served.cones_in(wc.multi_prompts("seq1")[0][0])
    both = served.delta_for(named, weights)
    want = cones.union([rex, mia, extra])
    assert {n: d.index for n, d in both.layers.items()}.keys() == want.keys()
    assert all(torch.equal(both.layers[n].index, i) for n, i in want.items())
    one = served.delta_for(["<rex>"], weights)
    assert all(torch.equal(one.layers[n].index, i) for n, i in rex.items()) and set(one.layers) == set(rex)
    # a state where one subject was deleted keeps the joint record inert
    st_wo = type(st)(tenant=st.tenant, base_id=st.base_id, delta=st.delta, tokens={},
                     concepts=[c for c in st.concepts if c.name != "mia"])
    assert ServedTenant.from_state(st_wo, "cpu", torch.float32).joint == []


def test_shutting_the_joint_set_lowers_the_joint_loss_further(joint):
    """The refinement's premise on the shipped base: with the union already shut, also zeroing the joint set lowers
    the loss on the multi-subject images (fixed timesteps and noise), as the first-order rule predicts."""
    learner = joint["learner"]
    extra = joint["state"].concept("rex_mia").neurons
    union_only = learner.concept_loss()
    start = learner.start_weights
    try:
        learner.start_weights = {n: w.reshape(-1).index_fill(0, extra[n].to(w.device), 0).view(w.shape)
                                 if n in extra else w for n, w in start.items()}
        with_extra = learner.concept_loss()
    finally:
        learner.start_weights = start
    print(f"joint loss: union shut {union_only:.4f}, union + joint set shut {with_extra:.4f}")
    assert with_extra < 0.99 * union_only, (union_only, with_extra)


def test_joint_run_refuses_unknown_cns_or_joint_names(joint, tiny_base, tmp_path):
    store, req = joint["store"], joint["req"]
    for names, fragment in ((("rex", "nope"), "has no concept 'nope'"), (("rex", "rex_mia"), "itself a joint record")):
        cfg = LearnerConfig(steps=1, method="cones", cones_joint=names)
        bad = ConceptRequest("acme", "again", "pair", req.images)
        with pytest.raises(InputError, match=fragment):
            make_learner(tiny_base, store, bad, cfg)
    with pytest.raises(ConfigError, match="two or more distinct"):
        LearnerConfig(method="cones", cones_joint=("rex",))
    with pytest.raises(ConfigError, match="method='cones'"):
        LearnerConfig(cones_joint=("rex", "mia"))
    assert LearnerConfig.from_dict(joint["cfg"].to_dict()).cones_joint == ("rex", "mia")  # list after JSON -> tuple


def test_cli_flag_reaches_the_job_entrypoint():
    import argparse
    import shlex

    from cns_ray.cli import add_common
    from cns_ray.cli.learn_cmds import add_learn_args, learn_request_and_config
    from cns_ray.jobs.submit import learn_entrypoint

    p = argparse.ArgumentParser()
    add_common(p)
    add_learn_args(p)
    args = p.parse_args(["--tenant", "acme", "--concept", "rex_mia", "--images", "x", "--class-word", "pair",
                         "--method", "cones", "--cones-joint", "rex, mia"])
    req, cfg = learn_request_and_config(args)
    assert cfg.cones_joint == ("rex", "mia")
    cmd = shlex.split(learn_entrypoint(req, cfg, "./s", "tiny"))
    assert cmd[cmd.index("--cones-joint") + 1] == "rex,mia"
    again = p.parse_args(cmd[3:])
    assert learn_request_and_config(again)[1].cones_joint == ("rex", "mia")


def test_swap_and_mixed_paths_serve_the_joint_set_alike(joint, tiny_base):
    import io

    import numpy as np

    from cns_ray.serve.batch import generate_batch
    from cns_ray.serve.swap import GenerationRequest, ServedTenant, generate_images, weights_digest

    def px(png):
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)

    st = joint["state"]
    with_joint = ServedTenant.from_state(st, "cpu", torch.float32)
    without = ServedTenant.from_state(type(st)(tenant=st.tenant, base_id=st.base_id, delta=st.delta, tokens={},
                                               concepts=[c for c in st.concepts if c.name != "rex_mia"]), "cpu", torch.float32)
    prompt = wc.multi_prompts("seq1")[0][0]
    req = GenerationRequest(prompt=prompt, steps=3, guidance_scale=4.0, seed=2)
    weights = tiny_base.target_weights()
    before = weights_digest(tiny_base)
    batched = generate_batch(tiny_base, weights, [(with_joint, req), (without, req)])
    assert weights_digest(tiny_base) == before
    for tenant, got in zip((with_joint, without), batched):
        diff = np.abs(px(got[0]) - px(generate_images(tiny_base, weights, tenant, req)[0]))
        assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())
    assert weights_digest(tiny_base) == before
    assert np.abs(px(batched[0][0]) - px(batched[1][0])).max() > 10  # the joint set changes the two-subject image
