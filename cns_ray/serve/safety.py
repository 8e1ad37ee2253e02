"""The base folder's safety checker as a serving option (``ServingConfig.safety_checker``).

A diffusers folder may ship ``safety_checker/`` (StableDiffusionSafetyChecker) and ``feature_extractor/`` (SD-1.5
does). The base loader leaves them out (learning never needs them). With the option on, a generator replica loads
them into the shared pipeline, which then runs them on every image of every tenant (swap and mixed paths alike) and
answers a flagged image blank, as diffusers does. With the option off and a folder that ships one, the replica logs a
warning at start: an operator turns it off knowingly (README: what a shared endpoint does about it).
"""

from __future__ import annotations

import logging

from cns_ray.errors import ConfigError

log = logging.getLogger(__name__)


def ships_safety_checker(base) -> bool:
    folder = getattr(base, "folder", None)
    return folder is not None and (folder / "safety_checker").is_dir() and (folder / "feature_extractor").is_dir()


def configure_safety_checker(base, enabled: bool) -> bool:
    """Load the folder's checker into ``base.pipeline`` when ``enabled``; True when it runs from now on."""
    has = ships_safety_checker(base)
    if not enabled:
        if has:
            log.warning("base model %s ships a safety checker and serving runs without it (safety_checker=False): "
                        "every tenant's images are served unfiltered; set safety_checker=True (cns serve --safety-checker) "
                        "to run it", base.source)
        return False
    if not has:
        raise ConfigError(f"safety_checker=True but base model {base.source!r} ships no safety_checker/ and "
                          "feature_extractor/ folders: use a base that has them (e.g. Stable Diffusion 1.5) or turn the "
                          "option off")
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    pipe = base.pipeline
    checker = StableDiffusionSafetyChecker.from_pretrained(str(base.folder / "safety_checker"), local_files_only=True)
    checker = checker.to(device=pipe.unet.device, dtype=pipe.unet.dtype).eval().requires_grad_(False)
    extractor = CLIPImageProcessor.from_pretrained(str(base.folder / "feature_extractor"), local_files_only=True)
    pipe.register_modules(safety_checker=checker, feature_extractor=extractor)
    log.info("base model %s: safety checker on", base.source)
    return True
