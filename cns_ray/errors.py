"""One error hierarchy. Every message names the value, the limit and the fix."""

from __future__ import annotations


class CNSError(Exception):
    """Base of every error cns-ray raises on purpose."""


class ConfigError(CNSError, ValueError):
    """A configuration value is out of range or inconsistent."""


class InvalidNameError(CNSError, ValueError):
    """A tenant, concept or token name is not allowed (path tricks, length, characters)."""


class DeltaValidationError(CNSError, ValueError):
    """A sparse delta is not valid for the base it is meant for. Carries every problem found."""

    def __init__(self, problems: list[str], *, source: str = "delta"):
        self.problems = list(problems)
        self.source = source
        shown = "\n  - ".join(self.problems[:20])
        more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        super().__init__(f"{source} is invalid ({len(self.problems)} problem(s)); nothing was applied:\n  - {shown}{more}")


class BaseMismatchError(DeltaValidationError):
    """A state was learned on another base model (its base_id differs)."""


class StoreError(CNSError):
    """The concept store could not be read or written."""


class NotFoundError(StoreError, KeyError):
    """A tenant, version, concept or cached object does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CommitConflictError(StoreError):
    """Another writer moved the tenant's head first; nothing of this commit is visible."""


class CorruptStateError(StoreError):
    """A stored file is unreadable, truncated or inconsistent with its manifest."""


class ModelLoadError(CNSError):
    """A base model could not be found or loaded."""


class InputError(CNSError, ValueError):
    """User input (images, captions, prompts, tokens) is unusable."""
