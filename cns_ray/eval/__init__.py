"""Evaluation on the toy world: the CLIP-style metric model, the paper's metrics, the harness and its runner."""
