"""Evaluation on the toy world: the CLIP-style metric model, the paper's metrics, the harness and its runner."""

import cns_ray.models.patch_vae  # noqa: F401  (diffusers folders saved with the patch autoencoder name this module)
