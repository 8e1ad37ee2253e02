"""Concepts that are not in the project: drawn with PIL (not the world's renderer: cns_ray/eval/drawn.py), captioned as a user would.

Two instances of one class (a circle) are learned one after the other by one tenant on the shipped base, with the
earlier concept's keys/values preserved (``preserve_lambda`` 3, at ``L_reg`` 0.01: the shipped base's defaults and
the demo's setting, docs/method-notes.md); then the first still draws its colours, the second draws its own, and a two-concept prompt
puts each at its place. Scored by exact pixel colours (cns_ray.eval.pixels), against the base drawing the class word
(the floor)."""

from world_base import needs_world_v2_base
import pytest

from cns_ray.config import LearnerConfig, SelectionConfig, StoreConfig
from cns_ray.eval.drawn import BOBA, KIKI, palette_fit as _fit, write_folder
from cns_ray.eval.generate import generate
from cns_ray.learn import CNSLearner, ConceptRequest
from cns_ray.select import general_masks_local
from cns_ray.store import ConceptStore

pytestmark = [pytest.mark.slow, needs_world_v2_base]


def test_two_user_circles_learned_kept_and_composed(fresh_tiny, tmp_path):
    from cns_ray.eval.harness import calibration_prompts

    base = fresh_tiny
    store = ConceptStore(StoreConfig(uri=str(tmp_path / "store")))
    general = general_masks_local(base, calibration_prompts(), SelectionConfig())
    cfg = LearnerConfig(steps=120, batch_size=4, augment=False, seed=0, reg_lambda=0.01, preserve_lambda=3.0)
    fits = {}
    for name, look in (KIKI, BOBA):
        req = ConceptRequest("acme", name, "circle", str(write_folder(tmp_path, name, look)), token=f"<{name}>")
        learner = CNSLearner(base, store, req, cfg, general)
        while learner.step_index < learner.total_steps:
            learner.step()
        learner.commit()
        if name == "kiki":
            st = store.load("acme", shapes=base.target_shapes(), base_id=base.base_id)
            fits["kiki_alone"] = _fit(generate(base, st.delta, st.tokens, "a large <kiki> circle at the center on a grey background", 4, 0, 20, 4.0), look)
    state = store.load("acme", shapes=base.target_shapes(), base_id=base.base_id)
    gen = lambda p, delta=state.delta, tokens=state.tokens: generate(base, delta, tokens, p, 4, 0, 20, 4.0)  # noqa: E731
    floor = gen("a large circle at the center on a grey background", None, {})
    kiki, boba = gen("a large <kiki> circle at the center on a grey background"), \
        gen("a large <boba> circle at the center on a grey background")
    fits.update(kiki=_fit(kiki, KIKI[1]), boba=_fit(boba, BOBA[1]), floor_kiki=_fit(floor, KIKI[1]),
                floor_boba=_fit(floor, BOBA[1]))
    # measured on the shipped base (step 68,500), 120 steps: kiki 0.00 -> 0.96 alone and 1.00 after boba; boba
    # 0.02 -> 0.46; in the pair left kiki 0.62 (boba 0.00), right boba 0.17 (kiki 0.05). At preserve 1 kiki is lost
    # after boba (0.08); at 10 boba does not show at the right of the pair (0.09 vs kiki 0.12). The base before
    # (29,600, preserve 1): kiki 0.15 -> 0.84 alone and 0.82 after boba; boba 0.05 -> 0.58.
    assert fits["kiki_alone"] > fits["floor_kiki"] + 0.5, fits  # learned
    assert fits["kiki"] > 0.9 * fits["kiki_alone"], fits  # kept after a second circle with the same templates
    assert fits["boba"] > fits["floor_boba"] + 0.3, fits  # and the second learned too
    assert _fit(kiki, KIKI[1]) > _fit(kiki, BOBA[1]) and _fit(boba, BOBA[1]) > _fit(boba, KIKI[1])
    pair = gen("a small <kiki> circle at the left and a small <boba> circle at the right on a grey background")
    assert _fit(pair, KIKI[1], "left") > _fit(pair, BOBA[1], "left")
    assert _fit(pair, BOBA[1], "right") > _fit(pair, KIKI[1], "right")


def test_beside_described_partners_the_earlier_circle_is_drawn_second(fresh_tiny, tmp_path):
    """With 6 more drawings per concept of it beside a plain circle its caption describes (``write_folder(partner=
    "described")``), the earlier concept is drawn at the second place of a prompt too: ``<boba> ... at the left and
    <kiki> ... at the right`` puts each at its place (docs/method-notes.md: without them kiki at the right is 0.06)."""
    from cns_ray.eval.harness import calibration_prompts

    base = fresh_tiny
    store = ConceptStore(StoreConfig(uri=str(tmp_path / "store")))
    general = general_masks_local(base, calibration_prompts(), SelectionConfig())
    cfg = LearnerConfig(steps=240, batch_size=4, augment=False, seed=0, reg_lambda=0.01, preserve_lambda=3.0)
    for name, look in (KIKI, BOBA):
        folder = write_folder(tmp_path, name, look, None, 6, partner="described")
        assert len((folder / "captions.txt").read_text().splitlines()) == 12
        learner = CNSLearner(base, store, ConceptRequest("acme", name, "circle", str(folder), token=f"<{name}>"), cfg, general)
        while learner.step_index < learner.total_steps:
            learner.step()
        learner.commit()
    st = store.load("acme", shapes=base.target_shapes(), base_id=base.base_id)
    pair = generate(base, st.delta, st.tokens,
                    "a small <boba> circle at the left and a small <kiki> circle at the right on a grey background", 4, 0, 20, 4.0)
    second = generate(base, st.delta, st.tokens,
                      "a small plain green circle at the left and a small <kiki> circle at the right on a grey background", 4, 0, 20, 4.0)
    fits = {"left_boba": _fit(pair, BOBA[1], "left"), "left_kiki": _fit(pair, KIKI[1], "left"),
            "right_kiki": _fit(pair, KIKI[1], "right"), "right_boba": _fit(pair, BOBA[1], "right"),
            "second_kiki": _fit(second, KIKI[1], "right")}
    # measured (shipped base, 240 steps, seed 0): boba left 0.95 (kiki there 0.02), kiki right 0.99 (boba there 0.00),
    # kiki after a described green circle 0.70; the other order (kiki left, boba right) still draws kiki twice
    assert fits["right_kiki"] > 0.5 and fits["right_kiki"] > fits["right_boba"] + 0.3, fits  # the earlier one, second
    assert fits["left_boba"] > 0.3 and fits["left_boba"] > fits["left_kiki"], fits  # the later one at its place
    assert fits["second_kiki"] > 0.3, fits  # second after a described circle as well
