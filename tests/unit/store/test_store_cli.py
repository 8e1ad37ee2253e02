"""`cns --help` lists the store verbs (the verbs themselves run in store_cases.test_cli_concepts_verbs)."""

from __future__ import annotations

import pytest

from cns_ray.cli import main


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["concepts", "--help"], ["list", "show", "history", "rollback", "delete", "export"]),
        (["concepts", "rollback", "--help"], ["--tenant", "--store", "VERSION"]),
        (["store", "--help"], ["verify", "tenants"]),
        (["store", "verify", "--help"], ["--store", "--json"]),
    ],
)
def test_help_lists_verbs_and_options(argv, expect, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr().out
    assert e.value.code == 0 and all(x in out for x in expect), out
