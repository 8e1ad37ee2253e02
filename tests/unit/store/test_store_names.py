"""Tenant/concept names and placeholder tokens: what store keys may be made of."""

from __future__ import annotations

import pytest

from cns_ray.errors import InvalidNameError
from cns_ray.store import validate_name, validate_token


@pytest.mark.parametrize("good", ["acme", "Acme-Studio_2", "a", "v1.2", "x" * 64, "0day"])
def test_good_names_pass(good):
    assert validate_name(good, "tenant") == good


@pytest.mark.parametrize(
    "bad, why",
    [
        ("../x", "path separator or '..'"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("..", "'..'"),
        ("a..b", "'..'"),
        ("", "empty"),
        ("x" * 65, "65 characters, the limit is 64"),
        (".hidden", "start with a letter or digit"),
        ("-flag", "start with a letter or digit"),
        ("has space", "' '"),
        ("naïve", "'ï'"),
        ("tab\t", "'\\t'"),
        (None, "must be a string"),
        (7, "must be a string"),
    ],
)
def test_bad_names_refused_with_value_limit_and_fix(bad, why):
    with pytest.raises(InvalidNameError) as e:
        validate_name(bad, "tenant")
    msg = str(e.value)
    assert why in msg and "tenant name" in msg and "1-64 characters" in msg  # the value's problem, the rule, an example


@pytest.mark.parametrize("good", ["<rex>", "<sks-dog_2>", "<a>", "<v1.2>"])
def test_good_tokens(good):
    assert validate_token(good) == good


@pytest.mark.parametrize("bad", ["rex", "<>", "<re x>", "<../x>", "<a/b>", "<<rex>>", "<" + "x" * 63 + ">", "", None])
def test_bad_tokens_refused(bad):
    with pytest.raises(InvalidNameError, match="placeholder token"):
        validate_token(bad)
