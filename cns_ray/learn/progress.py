"""Progress reporting for learning runs. Library code reports through a callback; the CLI passes a tqdm bar."""

from __future__ import annotations


class TqdmProgress:
    """A ``progress(step, total, loss)`` callback drawing a tqdm bar (step, loss, ETA); closes on the last step."""

    def __init__(self, desc: str = "learning", **tqdm_kwargs):
        self.desc, self.kwargs, self.bar = desc, tqdm_kwargs, None

    def __call__(self, step: int, total: int, loss: float) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self.desc, initial=step - 1, unit="step", **self.kwargs)
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if step >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def tqdm_progress(desc: str = "learning", **tqdm_kwargs) -> TqdmProgress:
    """A tqdm progress callback for :func:`cns_ray.learn.learn_concept` (for the CLI; the library never prints)."""
    return TqdmProgress(desc, **tqdm_kwargs)
