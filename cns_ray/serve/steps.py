"""The per-step hook of a pipeline call: cancellation (checked after every denoising step) and the test fault.

A request that is abandoned (client disconnect, the caller's timeout) sets its ``threading.Event``; the pipeline
thread sees it at the end of the current step and raises :class:`RequestCancelledError`, so the swap path restores
the weights (its ``finally``) and the worker thread is free for the next request. In mixed mode a call holds several
requests: it stops when every request in it is cancelled (the others still want their images).
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence

from cns_ray.errors import RequestCancelledError


class InjectedFault(RuntimeError):
    """Raised on purpose inside the generation (ServingConfig.fault_marker; tests only)."""


StepCallback = Callable[[object, int, object, dict], dict]


def step_callback(
    cancels: Sequence[threading.Event],
    prompts: Sequence[str],
    steps: int,
    fault_marker: str | None = None,
    on_step: Callable[[], None] | None = None,
) -> StepCallback:
    """A diffusers ``callback_on_step_end``: raises when all ``cancels`` are set, or at step 1 for the fault marker.

    ``on_step`` is called after every denoising step (the replica counts steps done)."""
    fault = bool(fault_marker) and any(fault_marker in p for p in prompts)

    def callback(_pipe, step: int, _t, kwargs: dict) -> dict:
        if on_step is not None:
            on_step()
        if cancels and all(c.is_set() for c in cancels):
            raise RequestCancelledError(f"request cancelled after {step + 1} of {steps} denoising steps: the client went away")
        if fault and step >= min(1, steps - 1):
            raise InjectedFault(f"injected fault at step {step} for a prompt containing {fault_marker!r}")
        return kwargs

    return callback


def check_not_cancelled(cancels: Sequence[threading.Event]) -> None:
    """Before a pipeline call: do not start work nobody waits for."""
    if cancels and all(c.is_set() for c in cancels):
        raise RequestCancelledError("request cancelled before generation started: the client went away")
