"""The continual CNS learner: data, regulariser, training loop (the Ray Train wrapper lives beside it)."""

from cns_ray.learn.learner import CNSLearner, ConceptRequest, learn_concept, make_learner
from cns_ray.learn.progress import tqdm_progress

__all__ = ["CNSLearner", "ConceptRequest", "learn_concept", "make_learner", "tqdm_progress"]
