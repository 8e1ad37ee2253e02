"""An exact, parameter-free "autoencoder" for small base models: pixel-unshuffle into patches and back.

An image [B, 3, H, W] in [-1, 1] becomes a latent [B, 3*p*p, H/p, W/p] (each p x p patch stacked into channels);
decoding is the exact inverse. It speaks the AutoencoderKL interface diffusers' StableDiffusionPipeline uses:
``encode(x).latent_dist`` (a deterministic DiagonalGaussianDistribution: mean = the patches, std = 0),
``decode(z).sample``, ``config.scaling_factor`` and ``config.block_out_channels`` (its length sets the pipeline's
``vae_scale_factor`` = 2 ** (len - 1) = p). ``save_pretrained``/``from_pretrained`` work like any diffusers model;
model_index.json records it by its module path, so loading needs only ``cns_ray`` importable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin

from cns_ray.errors import ConfigError, InputError


class PatchAutoencoder(ModelMixin, ConfigMixin):
    """Pixel-unshuffle autoencoder: exact, no learned weights (one 1-element buffer carries dtype/device)."""

    @register_to_config
    def __init__(self, patch_size: int = 4, in_channels: int = 3, scaling_factor: float = 1.0, block_out_channels: tuple[int, ...] | None = None, latent_channels: int | None = None):
        super().__init__()
        if patch_size < 1 or patch_size & (patch_size - 1):
            raise ConfigError(f"patch_size={patch_size} must be a power of two >= 1, e.g. 4")
        levels = int(math.log2(patch_size)) + 1
        if block_out_channels is not None and len(block_out_channels) != levels:
            raise ConfigError(
                f"block_out_channels has {len(block_out_channels)} entries; patch_size={patch_size} needs {levels} "
                "(the pipeline derives vae_scale_factor = 2 ** (len - 1)): leave it unset"
            )
        latent = in_channels * patch_size * patch_size
        if latent_channels is not None and latent_channels != latent:
            raise ConfigError(f"latent_channels={latent_channels} must be in_channels * patch_size**2 = {latent}: leave it unset")
        self.register_to_config(block_out_channels=tuple([latent] * levels), latent_channels=latent)
        self.register_buffer("anchor", torch.zeros(1), persistent=True)

    @property
    def latent_channels(self) -> int:
        return self.config.in_channels * self.config.patch_size**2

    def _check(self, x: torch.Tensor, what: str, channels: int) -> None:
        p = self.config.patch_size if what == "image" else 1
        if x.ndim != 4 or x.shape[1] != channels or x.shape[-1] % p or x.shape[-2] % p:
            raise InputError(
                f"{what} of shape {tuple(x.shape)}: expected [B, {channels}, H, W] with H and W multiples of {p}"
            )

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """x [B, 3, H, W] -> latent_dist with mean [B, 3*p*p, H/p, W/p] and std 0."""
        self._check(x, "image", self.config.in_channels)
        mean = F.pixel_unshuffle(x, self.config.patch_size)  # [B, C*p*p, H/p, W/p]
        dist = DiagonalGaussianDistribution(torch.cat([mean, torch.zeros_like(mean)], dim=1), deterministic=True)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        """z [B, 3*p*p, h, w] -> sample [B, 3, h*p, w*p] (exact inverse of encode)."""
        self._check(z, "latent", self.latent_channels)
        x = F.pixel_shuffle(z, self.config.patch_size)  # [B, 3, H, W]
        return DecoderOutput(sample=x) if return_dict else (x,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        z = self.encode(sample).latent_dist.mode()
        return self.decode(z, return_dict=return_dict)
