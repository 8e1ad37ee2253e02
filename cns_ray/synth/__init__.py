"""Zero-shot delta synthesis (after LoRA Diffusion): a concept library learned on Ray, a VAE over concept states
with a conditional flow in its latent, and the commit of a synthesized concept without training.

- :mod:`~cns_ray.synth.coords`: states as vectors on a fixed coordinate set (pure tensors);
- :mod:`~cns_ray.synth.model`: the networks and their training loops (pure torch);
- :mod:`~cns_ray.synth.synthesizer`: the trained synthesizer, its files;
- :mod:`~cns_ray.synth.baselines`: nearest library concept, embedding-weighted blend;
- :mod:`~cns_ray.synth.library`: the library in the store's reserved ``library/{base_id}/`` namespace;
- :mod:`~cns_ray.synth.build`: building the library with Ray tasks;
- :mod:`~cns_ray.synth.apply`: where a synthesized state lands, and its commit.
"""
