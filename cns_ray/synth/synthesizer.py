"""The trained synthesizer: reference embedding -> a concept-state vector on its coordinate set; save and load.

Files (a folder, a few MB): ``synth.safetensors`` (the coordinates as int32 per layer, the projection, the VAE and
flow weights, the latent statistics) and ``synth.json`` (config, base_id, layer shapes, token width, the metric
model whose image encoder gives the condition, training summary). A synthesizer made for one base is refused on
another (its coordinates and values mean nothing there).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from cns_ray.errors import BaseMismatchError, ModelLoadError
from cns_ray.synth.coords import CoordSet
from cns_ray.synth.model import FlowNet, StateVAE, SynthConfig, neighbours, retrieve, sample_flow, train_flow, train_vae

log = logging.getLogger(__name__)

WEIGHTS = "synth.safetensors"
META = "synth.json"
FORMAT = 1


class Synthesizer:
    """A VAE over concept states and a conditional flow in its latent, on one base model's coordinate set."""

    def __init__(self, coords: CoordSet, cfg: SynthConfig, cond_dim: int, base_id: str, k: int, meta: dict | None = None):
        self.coords, self.cfg, self.cond_dim, self.base_id, self.k = coords, cfg, int(cond_dim), base_id, int(k)
        self.vae = StateVAE(coords.dim, cfg, self.k, coords.token_dim)
        self.flow = FlowNet(cfg.z_dim, self.flow_cond_dim, cfg.hidden)
        self.z_mean = torch.zeros(cfg.z_dim)
        self.z_std = torch.ones(cfg.z_dim)
        self.mem_cond = torch.zeros(0, self.cond_dim)  # [M, c] the library's conditions (retrieval only)
        self.mem_z = torch.zeros(0, cfg.z_dim)  # [M, z] their states' standardised latents
        self.mem_x = torch.zeros(0, coords.dim)  # [S, D] the library's distinct states (residual only)
        self.mem_row = torch.zeros(0, dtype=torch.long)  # [M] each memory row's state in mem_x
        self.meta = dict(meta or {})

    @property
    def flow_cond_dim(self) -> int:
        return self.cond_dim + (self.cfg.z_dim if self.cfg.retrieval_k else 0)

    # ------------------------------------------------------------------ training
    @classmethod
    def fit(cls, x: torch.Tensor, cond: torch.Tensor, coords: CoordSet, base_id: str, cfg: SynthConfig = SynthConfig(),
            meta: dict | None = None) -> "Synthesizer":
        """Train on library vectors x [N, D] and their reference embeddings cond [N, c] (N >= 2)."""
        if x.ndim != 2 or x.shape[1] != coords.dim or cond.shape[0] != x.shape[0] or x.shape[0] < 2:
            raise ModelLoadError(f"training data x {tuple(x.shape)} / cond {tuple(cond.shape)} must be [N, {coords.dim}] "
                                 "and [N, c] with N >= 2 library concepts: build a larger library")
        n_states = int((meta or {}).get("library_size", x.shape[0]))  # rows may repeat a state (extra views)
        k = max(1, min(cfg.pca_dim, n_states - 1))
        synth = cls(coords, cfg, cond.shape[1], base_id, k, meta)
        gen = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)  # the modules' initial weights
        synth.vae = StateVAE(coords.dim, cfg, k, coords.token_dim)
        synth.flow = FlowNet(cfg.z_dim, synth.flow_cond_dim, cfg.hidden)
        vae_losses = train_vae(synth.vae, x.float(), cfg, gen)
        with torch.no_grad():
            mu = synth.vae.encode(x.float())[0]  # [N, z]
            synth.z_mean, synth.z_std = mu.mean(0), mu.std(0).clamp(min=1e-4)
        z1, c1, hint = (mu - synth.z_mean) / synth.z_std, F.normalize(cond.float(), dim=-1), None
        if cfg.retrieval_k:
            states, state = torch.unique(x.float(), dim=0, return_inverse=True)  # [S, D], [N]: rows of one state share an id
            synth.mem_cond, synth.mem_z = c1, z1
            if cfg.residual:
                synth.mem_x, synth.mem_row = states, state
            hint = retrieve(c1, c1, z1, cfg.retrieval_k, cfg.retrieval_temperature,
                            exclude=state[:, None] == state[None, :])  # leave its own state out, as for a new concept
        flow_losses = train_flow(synth.flow, z1, c1, cfg, gen, hint)
        synth.vae.eval()
        synth.flow.eval()
        synth.meta.update({"library_size": int(synth.meta.get("library_size", x.shape[0])), "pca_dim": k,
                           "vae_loss_last100": sum(vae_losses[-100:]) / min(100, len(vae_losses)),
                           "flow_loss_last100": sum(flow_losses[-100:]) / min(100, len(flow_losses))})
        return synth

    # ------------------------------------------------------------------ use
    @torch.no_grad()
    def sample(self, embedding: torch.Tensor, seed: int = 0, temperature: float | None = None,
               start: torch.Tensor | None = None, t_start: float = 0.0) -> torch.Tensor:
        """A state vector [D] for one reference embedding [c] (deterministic for a seed). ``start`` [D]: a state
        (e.g. the library's blend for this embedding) to begin from at ``t_start`` instead of pure noise."""
        if embedding.shape != (self.cond_dim,):
            raise ModelLoadError(f"reference embedding of shape {tuple(embedding.shape)}, the synthesizer was trained on "
                                 f"[{self.cond_dim}] embeddings ({self.meta.get('metric', 'its metric model')}): use the "
                                 "metric model it was trained with")
        gen = torch.Generator().manual_seed(int(seed))
        c = F.normalize(embedding.float(), dim=-1)[None]
        temp = self.cfg.temperature if temperature is None else float(temperature)
        z0 = None
        if start is not None:
            if start.shape != (self.coords.dim,):
                raise ModelLoadError(f"start state of shape {tuple(start.shape)}, the synthesizer's states are "
                                     f"[{self.coords.dim}]: pass a vector on its coordinate set")
            z0 = ((self.vae.encode(start.float()[None])[0] - self.z_mean) / self.z_std)  # [1, z]
        near = None
        if self.cfg.retrieval_k:
            w, idx = neighbours(c, self.mem_cond, self.cfg.retrieval_k, self.cfg.retrieval_temperature)  # [1, k]
            hint = (w[..., None] * self.mem_z[idx]).sum(1)  # [1, z]
            c = torch.cat([c, hint], dim=-1)
            if start is None and self.cfg.start_t > 0:
                z0, t_start = hint, self.cfg.start_t
            if start is None and self.cfg.residual:
                near = (w[0, :, None] * self.mem_x[self.mem_row[idx[0]]]).sum(0)  # [D] the neighbours in full
        z = sample_flow(self.flow, c, self.cfg.z_dim, self.cfg.sample_steps, temp, gen, z0, t_start)[0]
        out = self.vae.decode(z * self.z_std + self.z_mean)  # [D]
        if near is not None:  # the neighbours plus the flow's move away from where it started
            out = near + out - self.vae.decode(hint[0] * self.z_std + self.z_mean)
        return out

    def check_base(self, base_id: str) -> None:
        if base_id != self.base_id:
            raise BaseMismatchError(
                [f"the synthesizer was trained for base_id {self.base_id!r}, the base is {base_id!r}: rebuild it for this "
                 "base (python -m pipelines.build_library, then python -m pipelines.train_synth), or use its base"],
                source=self.meta.get("folder", "synthesizer"))

    # ------------------------------------------------------------------ files
    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"coords.{n}": self.coords.index[n].to(torch.int32).contiguous() for n in self.coords.layers}
        tensors.update({f"vae.{k}": v.detach().float().contiguous() for k, v in self.vae.state_dict().items()})
        tensors["vae.proj.basis"] = self.vae.proj.basis.half().contiguous()  # the bulk of the file
        tensors.update({f"flow.{k}": v.detach().float().contiguous() for k, v in self.flow.state_dict().items()})
        tensors["z_mean"], tensors["z_std"] = self.z_mean.contiguous(), self.z_std.contiguous()
        if self.cfg.retrieval_k:
            tensors["mem_cond"], tensors["mem_z"] = self.mem_cond.half().contiguous(), self.mem_z.contiguous()
        if self.cfg.residual:
            tensors["mem_x"], tensors["mem_row"] = self.mem_x.half().contiguous(), self.mem_row.to(torch.int32).contiguous()
        save_file(tensors, str(folder / WEIGHTS))
        meta = {"format": FORMAT, "base_id": self.base_id, "config": asdict(self.cfg), "cond_dim": self.cond_dim,
                "pca_dim": self.k, "token_dim": self.coords.token_dim,
                "shapes": {n: list(self.coords.shapes[n]) for n in self.coords.layers}, **{
                    k: v for k, v in self.meta.items() if k not in ("folder",)}}
        (folder / META).write_text(json.dumps(meta, indent=1, sort_keys=True))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Synthesizer":
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / META).exists() or not (folder / WEIGHTS).exists():
            raise ModelLoadError(f"{folder} holds no synthesizer (needs {META} and {WEIGHTS}): train one with "
                                 "python -m pipelines.train_synth (after python -m pipelines.build_library)")
        try:
            meta = json.loads((folder / META).read_text())
            if meta.get("format") != FORMAT:
                raise ModelLoadError(f"{folder / META} has format {meta.get('format')!r}, this cns-ray reads {FORMAT}: retrain it")
            t = load_file(str(folder / WEIGHTS))
            shapes = {n: tuple(s) for n, s in meta["shapes"].items()}
            coords = CoordSet(shapes, {n: t[f"coords.{n}"].long() for n in shapes}, int(meta["token_dim"]))
            extra = {k: v for k, v in meta.items() if k not in ("format", "base_id", "config", "cond_dim", "pca_dim",
                                                                  "token_dim", "shapes")}
            synth = cls(coords, SynthConfig(**meta["config"]), meta["cond_dim"], meta["base_id"], meta["pca_dim"],
                        {**extra, "folder": str(folder)})
            synth.vae.load_state_dict({k[4:]: v.float() for k, v in t.items() if k.startswith("vae.")})
            synth.flow.load_state_dict({k[5:]: v for k, v in t.items() if k.startswith("flow.")})
            synth.z_mean, synth.z_std = t["z_mean"], t["z_std"]
            if synth.cfg.retrieval_k:
                synth.mem_cond, synth.mem_z = t["mem_cond"].float(), t["mem_z"]
            if synth.cfg.residual:
                synth.mem_x, synth.mem_row = t["mem_x"].float(), t["mem_row"].long()
        except ModelLoadError:
            raise
        except Exception as e:  # noqa: BLE001 - safetensors, json and torch each raise their own types here
            raise ModelLoadError(f"{folder} is not a readable synthesizer ({type(e).__name__}: {e}): retrain it with "
                                 "python -m pipelines.train_synth") from e
        synth.vae.eval()
        synth.flow.eval()
        return synth


def default_synth_folder() -> Path:
    """Where the synthesizer for the shipped ``tiny`` base lives (inside the package)."""
    from cns_ray.data import data_path

    return data_path("synth", "tiny-world")
