"""`cns demo`, the README's main job, end to end on local Ray (reduced steps)."""

from __future__ import annotations

import pytest
from PIL import Image

from cns_ray.config import StoreConfig
from cns_ray.demo import DEMO_TENANTS, DemoConfig, run_demo
from cns_ray.store import ConceptStore

pytestmark = pytest.mark.slow


def test_demo_learns_two_tenants_in_order_and_serves_over_http(ray_local, tmp_path):
    lines: list[str] = []
    summary = run_demo(DemoConfig(out_dir=str(tmp_path), steps=3, actors=2, gen_steps=2), say=lines.append)

    assert summary["versions"] == {"acme": [1, 2], "bravo": [1, 2]}
    store = ConceptStore(StoreConfig(uri=summary["store"]))
    for tenant, concepts in DEMO_TENANTS.items():
        hist = store.history(tenant)
        assert [h.version for h in hist] == [1, 2]
        assert hist[1].parent == 1  # concept 2 was learned on top of concept 1
        assert store.load(tenant).tokens.keys() == {f"<{c}>" for c in concepts}
        assert [c.name for c in store.load(tenant).concepts] == list(concepts)
    files = summary["files"]
    # the concepts sheet; per tenant a before/after grid, a two-concept image and four HTTP generations (each concept,
    # then the pair in both orders)
    assert len(files) == 1 + 2 * 2 + 2 * 4
    from cns_ray.world import concepts as wc

    for c in (c for cs in DEMO_TENANTS.values() for c in cs):  # the learned folders are the world's held-out instances
        captions = (tmp_path / "concepts" / c / "captions.txt").read_text().splitlines()
        word = wc.get_concept(c).class_word
        assert len(captions) == 6 + 6 and all(line.count(f"<{c}>") == 1 and f"<{c}> {word}" in line for line in captions)
        assert sum(" and a " in line for line in captions) == 6  # the two-object references, beside a described partner
    for f in files:
        with Image.open(f) as im:
            assert im.format == "PNG"
    grid = Image.open(tmp_path / "acme_before_after.png")
    assert grid.size == (4 * 128, 4 * 128)  # target + 3 versions x 4 prompts, 32 px tiles shown at 4x
    assert Image.open(tmp_path / "acme_two_concepts.png").size == (5 * 128, 2 * 128)  # per order: the target, 4 seeds
    import numpy as np

    from cns_ray.world.render import render_scene

    earlier, later = (wc.get_concept(c) for c in DEMO_TENANTS["acme"])
    sheet = np.asarray(Image.open(tmp_path / "acme_two_concepts.png").convert("RGB"))[::4, ::4]
    for row, (left, right) in enumerate(((later, earlier), (earlier, later))):  # the later concept first, then the earlier
        target = render_scene(wc.pair_scene(left, right, "grey"), 32)
        assert np.array_equal(sheet[32 * row:32 * (row + 1), :32], target)  # each row's first tile: its rendered target
    assert Image.open(tmp_path / "concepts.png").size == (12 * 34 * 4, 4 * 34 * 4)  # 6 + 6 refs x 4 concepts, at 4x
    text = "\n".join(lines)
    assert "general neurons" in text and "concept neurons" in text and "from cache" not in text
