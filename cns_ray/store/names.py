"""Tenant, concept and placeholder-token names. Names become store keys, so no path tricks get through."""

from __future__ import annotations

import re

from cns_ray.errors import InvalidNameError

NAME_MAX = 64
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")  # \Z: "$" would also match before a final newline
TOKEN_RE = re.compile(r"^<[A-Za-z0-9][A-Za-z0-9_.-]{0,61}>\Z")
NAME_RULE = f"use 1-{NAME_MAX} characters from A-Z a-z 0-9 _ . -, starting with a letter or digit, without '..' (e.g. 'acme-studio')"


def validate_name(value: object, kind: str = "name") -> str:
    """Return ``value`` if it is a safe tenant/concept/key name, else raise :class:`InvalidNameError`."""
    if not isinstance(value, str):
        raise InvalidNameError(f"{kind} name {value!r} must be a string: {NAME_RULE}")
    if not value:
        raise InvalidNameError(f"{kind} name is empty: {NAME_RULE}")
    if len(value) > NAME_MAX:
        raise InvalidNameError(f"{kind} name {value[:20]!r}... has {len(value)} characters, the limit is {NAME_MAX}: {NAME_RULE}")
    if ".." in value or "/" in value or "\\" in value:
        raise InvalidNameError(f"{kind} name {value!r} contains a path separator or '..', which could escape the store: {NAME_RULE}")
    if not NAME_RE.match(value):
        bad = sorted({c for c in value if not (c.isascii() and (c.isalnum() or c in "_.-"))})
        why = f"characters {''.join(bad)!r} are not allowed" if bad else "it must start with a letter or digit"
        raise InvalidNameError(f"{kind} name {value!r} is not allowed ({why}): {NAME_RULE}")
    return value


def validate_token(value: object) -> str:
    """Return ``value`` if it is a placeholder token like ``<rex>``, else raise :class:`InvalidNameError`."""
    rule = "a placeholder token is '<' + 1-62 characters from A-Z a-z 0-9 _ . - (starting with a letter or digit) + '>', e.g. '<rex>'"
    if not isinstance(value, str) or not TOKEN_RE.match(value) or ".." in value:
        raise InvalidNameError(f"token {value!r} is not allowed: {rule}")
    return value
