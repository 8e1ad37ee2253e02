"""The synthesizer's math without a base model or store: state vectors, the VAE's round trip, deterministic
sampling, the baselines, its files, and its refusal on another base."""

import pytest
import torch

from cns_ray.delta import LayerDelta, SparseDelta
from cns_ray.errors import BaseMismatchError, ConfigError, InputError, ModelLoadError
from cns_ray.synth.baselines import blend, kernel, kernel_weights, nearest
from cns_ray.synth.coords import CoordSet
from cns_ray.synth.model import SynthConfig
from cns_ray.synth.synthesizer import Synthesizer

SHAPES = {"a.to_k": (8, 16), "b.to_v": (4, 16)}
QUICK = SynthConfig(pca_dim=8, z_dim=4, hidden=32, vae_steps=1500, flow_steps=800, batch_size=16)


def _delta(gen, n=12) -> SparseDelta:
    layers = {}
    for name, (o, i) in SHAPES.items():
        idx = torch.randperm(o * i, generator=gen)[:n].sort().values
        layers[name] = LayerDelta(idx, torch.randn(n, generator=gen))
    return SparseDelta("base-x", dict(SHAPES), layers)


def _library(n=24, seed=0):
    """n states on a low-rank structure (3 latent factors) with embeddings that determine them."""
    gen = torch.Generator().manual_seed(seed)
    deltas = [_delta(gen) for _ in range(n)]
    coords = CoordSet.union(deltas, token_dim=6)
    basis = torch.randn(3, coords.dim, generator=gen)
    factors = torch.randn(n, 3, generator=gen)
    x = factors @ basis  # [n, D]
    cond = torch.nn.functional.normalize(torch.cat([factors, torch.randn(n, 5, generator=gen) * 0.01], 1), dim=-1)
    return coords, x, cond


def test_state_vector_round_trip_and_outside_entries():
    gen = torch.Generator().manual_seed(1)
    d1, d2 = _delta(gen), _delta(gen)
    coords = CoordSet.union([d1], token_dim=6)
    tok = torch.randn(6, generator=gen)
    vec, outside = coords.vector(d1, tok)
    assert outside == 0 and vec.shape == (coords.dim,)
    values, t = coords.split(vec)
    assert torch.equal(t, tok)
    back = coords.to_delta(values, "base-x")
    for n, ld in d1.layers.items():
        assert torch.equal(back.layers[n].index, ld.index) and torch.allclose(back.layers[n].value, ld.value)
    _, outside2 = coords.vector(d2, tok)  # another support: entries off the coordinates are counted, not kept
    common = sum(int(torch.isin(d2.layers[n].index, d1.layers[n].index).sum()) for n in SHAPES)
    assert outside2 == d2.nnz - common
    with pytest.raises(InputError, match="token offset"):
        coords.vector(d1, torch.zeros(5))


def test_values_land_on_any_support_with_zeros_off_the_coordinates():
    gen = torch.Generator().manual_seed(2)
    d = _delta(gen)
    coords = CoordSet.union([d], token_dim=2)
    values, _ = coords.split(coords.vector(d, torch.zeros(2))[0])
    idx = torch.arange(8 * 16)
    got = coords.values_at(values, "a.to_k", idx)
    dense = torch.zeros(8 * 16)
    dense[d.layers["a.to_k"].index] = d.layers["a.to_k"].value
    assert torch.allclose(got, dense)


def test_vae_round_trip_error_is_small_on_the_library():
    coords, x, cond = _library()
    synth = Synthesizer.fit(x, cond, coords, "base-x", QUICK)
    rel = float((synth.vae.round_trip(x) - x).norm() / x.norm())
    assert rel < 0.15, rel  # 3 latent factors through a 4-d latent
    # the projection alone is exact on the library's span
    proj = synth.vae.proj
    assert float((proj.decode(proj.encode(x)) - x).norm() / x.norm()) < 1e-4


def test_sampling_is_deterministic_for_a_seed_and_follows_the_condition():
    coords, x, cond = _library()
    synth = Synthesizer.fit(x, cond, coords, "base-x", QUICK)
    a, b, c = synth.sample(cond[0], seed=3), synth.sample(cond[0], seed=3), synth.sample(cond[0], seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # at temperature 0 the sample for a library embedding is closer to that concept than to the library mean
    s = synth.sample(cond[5], seed=0, temperature=0.0)
    cos = torch.nn.functional.cosine_similarity
    assert float(cos(s[None], x[5][None])) > 0.5


def test_a_start_state_is_kept_in_proportion_to_where_it_starts_on_the_path():
    coords, x, cond = _library()
    synth = Synthesizer.fit(x, cond, coords, "base-x", QUICK)
    cos = torch.nn.functional.cosine_similarity
    start = x[3]  # a library state, offered for another concept's condition
    plain = synth.sample(cond[11], seed=2, temperature=1.0)
    assert torch.equal(synth.sample(cond[11], seed=2, temperature=1.0, start=start, t_start=0.0), plain)
    near = [float(cos(synth.sample(cond[11], seed=2, temperature=1.0, start=start, t_start=t)[None], start[None]))
            for t in (0.0, 0.5, 0.95)]
    assert near[2] > near[0] and near[2] > 0.9, near  # begun late on the path, the sample stays by its start
    with pytest.raises(ModelLoadError, match="coordinate set"):
        synth.sample(cond[11], start=start[:-1], t_start=0.5)
    with pytest.raises(ConfigError, match="t_start=1.0"):
        synth.sample(cond[11], start=start, t_start=1.0)


def test_a_retrieval_flow_reads_its_neighbours_and_keeps_them_in_its_files(tmp_path):
    from dataclasses import replace

    coords, x, cond = _library()
    cfg = replace(QUICK, retrieval_k=3, start_t=0.5)
    synth = Synthesizer.fit(x[:20], cond[:20], coords, "base-x", cfg)
    assert synth.mem_cond.shape == (20, cond.shape[1]) and synth.mem_z.shape == (20, cfg.z_dim)
    a = synth.sample(cond[22], seed=1, temperature=0.0)
    back = Synthesizer.load(synth.save(tmp_path / "s"))
    assert torch.allclose(back.sample(cond[22], seed=1, temperature=0.0), a, atol=1e-2)  # memory stored as fp16
    back.mem_z = back.mem_z.flip(0)  # other neighbours' latents: another proposal
    assert not torch.allclose(back.sample(cond[22], seed=1, temperature=0.0), a, atol=1e-2)
    with pytest.raises(ConfigError, match="start_t=0.5"):
        replace(QUICK, start_t=0.5)  # a start needs something retrieved to start from


class _ToHint(torch.nn.Module):
    """A flow whose every path ends at the retrieved latent (the condition's last z_dim numbers): it moves nothing."""

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim

    def forward(self, z, t, c):
        return (c[:, -self.z_dim:] - z) / (1 - t)[:, None]


def test_a_residual_flow_keeps_its_neighbours_in_full_and_only_adds_its_move(tmp_path):
    from dataclasses import replace

    coords, x, cond = _library()
    cfg = replace(QUICK, retrieval_k=3, start_t=0.5, residual=True)
    synth = Synthesizer.fit(x[:20], cond[:20], coords, "base-x", cfg)
    assert synth.mem_x.shape == (20, coords.dim) and torch.equal(synth.mem_x[synth.mem_row], x[:20])
    moved = synth.sample(cond[22], seed=1, temperature=0.0)
    back = Synthesizer.load(synth.save(tmp_path / "s"))
    assert torch.allclose(back.sample(cond[22], seed=1, temperature=0.0), moved, atol=1e-2)  # states kept as fp16
    neighbours = blend(x[:20], cond[:20], cond[22], k=3, temperature=cfg.retrieval_temperature)
    synth.flow = _ToHint(cfg.z_dim)  # no move: the neighbours' blend in full, exactly, not its VAE reconstruction
    assert torch.allclose(synth.sample(cond[22], seed=1, temperature=0.0), neighbours, atol=1e-4)
    assert not torch.allclose(moved, neighbours, atol=1e-3)  # the trained flow does move it
    plain = Synthesizer.fit(x[:20], cond[:20], coords, "base-x", replace(cfg, residual=False))
    plain.flow = _ToHint(cfg.z_dim)
    assert (plain.sample(cond[22], seed=1, temperature=0.0) - neighbours).norm() > 1e-3 * neighbours.norm()
    with pytest.raises(ConfigError, match="residual=True"):
        replace(QUICK, residual=True)  # nothing retrieved to keep


def test_baselines_pick_and_weight_the_nearest():
    coords, x, cond = _library()
    v, i = nearest(x, cond, cond[7])
    assert i == 7 and torch.equal(v, x[7])
    assert torch.allclose(blend(x, cond, cond[7], k=1), x[7])
    b = blend(x, cond, cond[7], k=3, temperature=1e-4)  # a sharp softmax: the nearest dominates
    assert torch.allclose(b, x[7], atol=1e-3)
    with pytest.raises(InputError):
        blend(x, cond, cond[7], k=0)


def test_kernel_interpolates_the_library_and_shrinks_to_its_mean_as_lam_grows():
    coords, x, cond = _library()
    near = kernel(x, cond, cond[3], gamma=2.0, lam=1e-5)  # ridge ~0: the fit passes through the library's states
    assert torch.allclose(near, x[3], atol=1e-2 * float(x[3].abs().max()))
    far = kernel(x, cond, cond[3], gamma=2.0, lam=1e6)  # heavy ridge: the library mean
    assert torch.allclose(far, x.mean(0), atol=1e-3 * float(x.abs().max()))
    w = kernel_weights(cond)
    assert torch.allclose(kernel(x, cond, cond[3], weights=w), kernel(x, cond, cond[3]))
    with pytest.raises(InputError, match="lam=0"):
        kernel(x, cond, cond[3], lam=0)


def test_at_library_norms_scales_each_block_to_the_library_median_and_keeps_direction():
    from cns_ray.synth.baselines import at_library_norms, library_norms

    lib = torch.tensor([[3.0, 4.0, 1.0], [6.0, 8.0, 2.0], [0.0, 1.0, 3.0]])  # delta block 2 wide, token block 1
    assert library_norms(lib, 1) == (5.0, 2.0)  # medians of (5, 10, 1) and (1, 2, 3)
    v = torch.tensor([0.3, 0.4, -0.5])
    out = at_library_norms(v, lib, 1)
    assert torch.allclose(out, torch.tensor([3.0, 4.0, -2.0]))  # each block at its median, its direction kept


def test_files_round_trip_and_refusals(tmp_path):
    coords, x, cond = _library()
    synth = Synthesizer.fit(x, cond, coords, "base-x", QUICK, {"metric": "toy"})
    folder = synth.save(tmp_path / "s")
    back = Synthesizer.load(folder)
    assert torch.allclose(back.sample(cond[1], seed=2), synth.sample(cond[1], seed=2), atol=1e-2 * float(x.abs().max()))
    assert back.meta["metric"] == "toy" and back.meta["library_size"] == 24
    with pytest.raises(BaseMismatchError, match="rebuild it for this base"):
        back.check_base("another-base")
    with pytest.raises(ModelLoadError, match="embeddings"):
        back.sample(torch.zeros(3))
    with pytest.raises(ModelLoadError, match="holds no synthesizer"):
        Synthesizer.load(tmp_path / "nothing")
    (folder / "synth.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="not a readable synthesizer"):
        Synthesizer.load(folder)


def test_the_cli_and_the_http_route_offer_the_library_s_sources():
    """The CLI's choices and the ingress's list are written out (neither imports cns_ray.synth at start-up): they
    must stay the library's."""
    from cns_ray.cli import build_parser
    from cns_ray.serve.learn_route import SOURCES as HTTP_SOURCES
    from cns_ray.synth.library import SOURCES

    import argparse

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    cli = next(a for a in sub.choices["synthesize"]._actions if a.dest == "source")
    assert tuple(cli.choices) == HTTP_SOURCES == SOURCES and cli.default == SOURCES[0]
