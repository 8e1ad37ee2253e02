"""cns-ray: continual, multi-tenant personalization of diffusion models on Ray (Concept Neuron Selection)."""

__version__ = "0.1.0"
