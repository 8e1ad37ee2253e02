"""The synthesizer's networks and their training loops (pure torch: no store, no base model, no Ray).

After LoRA Diffusion (Smith et al., arXiv 2412.02352), at toy scale:

- **VAE over concept states.** A state vector ``x`` [D] (:mod:`cns_ray.synth.coords`; D ~ 10^4 on the shipped base)
  is first projected on the library's principal directions (a fixed linear layer, fitted by SVD: ``p = (x - mean)
  @ basis.T / scale``, [k]) and an MLP VAE maps ``p`` to a latent ``z`` [z_dim] and back. The projection keeps the
  file small (k x D numbers instead of an MLP's D x hidden) and is exact on the library's span.
- **Conditional generator in the latent.** Flow matching (rectified flow): ``z_t = (1 - t) z0 + t z1`` with
  ``z0 ~ N(0, I)`` and ``z1`` a library concept's (standardised) latent mean; an MLP predicts ``z1 - z0`` from
  ``(z_t, t, c)`` where ``c`` is the image embedding of the concept's references. Sampling integrates the ODE from
  seeded noise (Euler), so a seed gives one deterministic state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cns_ray.errors import ConfigError


@dataclass(frozen=True)
class SynthConfig:
    """Sizes and training of the synthesizer (defaults: the shipped one)."""

    pca_dim: int = 64
    """Principal directions kept (at most the library size - 1)."""
    z_dim: int = 16
    """VAE latent width."""
    hidden: int = 256
    """Hidden width of the VAE and flow MLPs."""
    kl_weight: float = 1e-4
    """Weight of the VAE's KL term (small: the VAE is a compressor, the flow models the distribution)."""
    vae_steps: int = 3000
    flow_steps: int = 6000
    batch_size: int = 64
    lr: float = 1e-3
    cond_noise: float = 0.05
    """Gaussian noise added to the (unit) condition embeddings in training, so nearby embeddings map nearby."""
    sample_steps: int = 20
    """Euler steps of the sampling ODE."""
    token_weight: float = 1.0
    """Share of the token block against the delta block in the projection (1: equal; see Projection)."""
    temperature: float = 1.0
    """Scale of the sampling noise z0 (0: the ODE from the origin, one state per condition)."""
    retrieval_k: int = 0
    """> 0: the flow is also conditioned on the softmax(cos / retrieval_temperature) blend of the latents of the k
    library rows nearest the condition (trained leave-one-state-out), so it learns a correction to its neighbours
    rather than a mean over the whole library (0: the condition alone)."""
    retrieval_temperature: float = 0.05
    start_t: float = 0.0
    """Where on the flow's path sampling begins from the retrieved latent (needs retrieval_k > 0; 0: from noise)."""
    residual: bool = False
    """With retrieval: the proposal is the neighbours' blend in full state space plus the flow's move in the latent
    (decode(z) - decode(start)), so what the VAE's bottleneck drops of the neighbours is kept (the library's states
    are stored with the synthesizer: ~8 MB for 200 entries on tiny)."""
    seed: int = 0

    def __post_init__(self) -> None:
        p = []
        for name in ("pca_dim", "z_dim", "hidden", "vae_steps", "flow_steps", "batch_size", "sample_steps"):
            if int(getattr(self, name)) < 1:
                p.append(f"{name}={getattr(self, name)} must be >= 1")
        if self.retrieval_k < 0 or self.retrieval_temperature <= 0 or not 0.0 <= self.start_t < 1.0 or (
                self.start_t > 0 and self.retrieval_k == 0) or (self.residual and self.retrieval_k == 0):
            p.append(f"retrieval_k={self.retrieval_k} must be >= 0, retrieval_temperature={self.retrieval_temperature} > 0 "
                     f"and start_t={self.start_t} in [0, 1) (> 0, and residual={self.residual}, only with retrieval_k > 0)")
        if self.lr <= 0 or self.token_weight <= 0 or self.kl_weight < 0 or self.cond_noise < 0 or self.temperature < 0:
            p.append(f"lr={self.lr} and token_weight={self.token_weight} must be > 0; kl_weight={self.kl_weight}, cond_noise={self.cond_noise} and "
                     f"temperature={self.temperature} must be >= 0")
        if p:
            raise ConfigError("invalid SynthConfig: " + "; ".join(p))


def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, o))


class Projection(nn.Module):
    """The fixed linear first/last layer: x [*, D] <-> p [*, k] (principal directions, whitened).

    The two blocks of a state are balanced first (``weight`` [D]): the delta block (~10^4 entries) and the token
    block (~10^2) each get unit mean squared norm over the library, the token's then scaled by ``token_weight``.
    Without it the delta's variance would pick every direction, yet on the shipped base the token offset carries
    most of what a concept draws (docs/synthesis.md)."""

    def __init__(self, dim: int, k: int, token_dim: int):
        super().__init__()
        self.token_dim = int(token_dim)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("weight", torch.ones(dim))  # [D]
        self.register_buffer("basis", torch.zeros(k, dim))  # [k, D], orthonormal rows
        self.register_buffer("scale", torch.ones(k))  # [k]

    @torch.no_grad()
    def fit(self, x: torch.Tensor, token_weight: float = 1.0) -> None:
        """Block weights and principal directions of x [N, D] (N >= 2)."""
        mean = x.mean(0)
        xc = x - mean
        n_w = x.shape[1] - self.token_dim
        rms_d = xc[:, :n_w].pow(2).sum(1).mean().sqrt().clamp(min=1e-8)
        rms_t = xc[:, n_w:].pow(2).sum(1).mean().sqrt().clamp(min=1e-8)
        self.weight.copy_(torch.cat([torch.full((n_w,), 1.0 / float(rms_d)),
                                     torch.full((self.token_dim,), token_weight / float(rms_t))]))
        _, s, vh = torch.linalg.svd(xc * self.weight, full_matrices=False)  # vh [min(N, D), D]
        k = min(self.basis.shape[0], vh.shape[0])
        keep = (s[:k] > 1e-6 * s[0]).float()  # repeated rows (extra views of one state) add no direction: left at 0
        self.mean.copy_(mean)
        self.basis.zero_()
        self.basis[:k].copy_(vh[:k] * keep[:, None])
        self.scale.fill_(1.0)
        self.scale[:k].copy_(torch.where(keep > 0, s[:k] / max(x.shape[0] - 1, 1) ** 0.5, torch.ones_like(s[:k])))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) * self.weight) @ self.basis.T / self.scale  # [*, k]

    def decode(self, p: torch.Tensor) -> torch.Tensor:
        return (p * self.scale) @ self.basis / self.weight + self.mean  # [*, D]


class StateVAE(nn.Module):
    """Projection + MLP VAE: x [*, D] -> (mu, logvar) [*, z]; z -> x."""

    def __init__(self, dim: int, cfg: SynthConfig, k: int, token_dim: int):
        super().__init__()
        self.proj = Projection(dim, k, token_dim)
        self.enc = _mlp(k, cfg.hidden, 2 * cfg.z_dim)
        self.dec = _mlp(cfg.z_dim, cfg.hidden, k)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.enc(self.proj.encode(x)).chunk(2, dim=-1)
        return mu, logvar.clamp(-12, 6)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.proj.decode(self.dec(z))

    def round_trip(self, x: torch.Tensor) -> torch.Tensor:
        """decode(mean of encode(x)): x [N, D] -> [N, D]."""
        return self.decode(self.encode(x)[0])


class FlowNet(nn.Module):
    """v(z_t, t, c) [*, z]: an MLP on [z_t, t features, c]."""

    def __init__(self, z_dim: int, cond_dim: int, hidden: int):
        super().__init__()
        self.net = _mlp(z_dim + 8 + cond_dim, hidden, z_dim)

    @staticmethod
    def _time(t: torch.Tensor) -> torch.Tensor:  # t [B] -> [B, 8]
        f = torch.arange(1, 5, dtype=t.dtype, device=t.device) * torch.pi
        return torch.cat([torch.sin(t[:, None] * f), torch.cos(t[:, None] * f)], dim=-1)

    def forward(self, z: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, self._time(t), c], dim=-1))


def train_vae(vae: StateVAE, x: torch.Tensor, cfg: SynthConfig, gen: torch.Generator) -> list[float]:
    """Fit the projection on x [N, D], then the VAE on the projected library; returns the loss curve."""
    vae.proj.fit(x, cfg.token_weight)
    p_all = vae.proj.encode(x).detach()  # [N, k]
    opt = torch.optim.Adam([*vae.enc.parameters(), *vae.dec.parameters()], lr=cfg.lr)
    losses = []
    for _ in range(cfg.vae_steps):
        p = p_all[torch.randint(0, len(p_all), (cfg.batch_size,), generator=gen)]
        mu, logvar = vae.enc(p).chunk(2, dim=-1)
        logvar = logvar.clamp(-12, 6)
        z = mu + torch.randn(mu.shape, generator=gen) * (0.5 * logvar).exp()
        rec = F.mse_loss(vae.dec(z), p)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1).mean()
        loss = rec + cfg.kl_weight * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def neighbours(cond: torch.Tensor, mem_cond: torch.Tensor, k: int, temperature: float,
               exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax(cos / temperature) weights [B, k] and indices [B, k] of the k memory rows nearest each condition.

    cond [B, c] and mem_cond [M, c] unit vectors; ``exclude`` [B, M] bool: rows a condition may not use (its own
    state, in training)."""
    cos = cond @ mem_cond.T  # [B, M]
    if exclude is not None:
        cos = cos.masked_fill(exclude, float("-inf"))
    top = cos.topk(min(k, mem_cond.shape[0]), dim=-1)  # [B, k]
    return torch.softmax(top.values / temperature, dim=-1), top.indices


def retrieve(cond: torch.Tensor, mem_cond: torch.Tensor, mem_z: torch.Tensor, k: int, temperature: float,
             exclude: torch.Tensor | None = None) -> torch.Tensor:
    """The blend [B, z] of the latents mem_z [M, z] of the k memory rows nearest each condition (see neighbours)."""
    w, idx = neighbours(cond, mem_cond, k, temperature, exclude)
    return (w[..., None] * mem_z[idx]).sum(1)  # [B, z]


def train_flow(flow: FlowNet, z1: torch.Tensor, cond: torch.Tensor, cfg: SynthConfig, gen: torch.Generator,
               hint: torch.Tensor | None = None) -> list[float]:
    """Rectified flow from N(0, I) to the latents z1 [N, z] given conditions cond [N, c] (unit vectors) and, with
    retrieval, each row's retrieved latent ``hint`` [N, z] (appended to the condition, not noised)."""
    opt = torch.optim.Adam(flow.parameters(), lr=cfg.lr)
    losses = []
    for _ in range(cfg.flow_steps):
        pick = torch.randint(0, len(z1), (cfg.batch_size,), generator=gen)
        target, c = z1[pick], cond[pick]
        if cfg.cond_noise:
            c = F.normalize(c + cfg.cond_noise * torch.randn(c.shape, generator=gen), dim=-1)
        if hint is not None:
            c = torch.cat([c, hint[pick]], dim=-1)
        z0 = torch.randn(target.shape, generator=gen)
        t = torch.rand(len(pick), generator=gen)
        zt = (1 - t[:, None]) * z0 + t[:, None] * target
        loss = F.mse_loss(flow(zt, t, c), target - z0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def sample_flow(flow: FlowNet, cond: torch.Tensor, z_dim: int, steps: int, temperature: float,
                gen: torch.Generator, start: torch.Tensor | None = None, t_start: float = 0.0) -> torch.Tensor:
    """Euler integration of the flow from seeded noise: cond [B, c] -> z [B, z].

    ``start`` [B, z] (standardised latents) with ``t_start`` in [0, 1): begin on the path at ``z_t = (1 - t) z0 + t
    start`` and integrate from there (SDEdit's partial noising, in the latent), so the sample keeps what of ``start``
    the flow does not move; ``t_start`` 0 is the plain sample."""
    if not 0.0 <= t_start < 1.0:
        raise ConfigError(f"t_start={t_start} must be in [0, 1) (0: from noise; nearer 1: nearer the start latent)")
    z = temperature * torch.randn((cond.shape[0], z_dim), generator=gen)
    if start is not None:
        z = (1 - t_start) * z + t_start * start
    first = int(round(t_start * steps)) if start is not None else 0
    for i in range(first, steps):
        t = torch.full((cond.shape[0],), i / steps)
        z = z + flow(z, t, cond) / steps
    return z
