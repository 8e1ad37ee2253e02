"""`cns --help` lists the store verbs (the verbs themselves run in store_cases.test_cli_concepts_verbs)."""

from __future__ import annotations

import pytest

from cns_ray.cli import main


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["concepts", "--help"], ["list", "show", "history", "rollback", "delete", "purge", "export"]),
        (["concepts", "rollback", "--help"], ["--tenant", "--store", "VERSION"]),
        (["store", "--help"], ["verify", "gc", "tenants"]),
        (["store", "gc", "--help"], ["--keep-last", "--grace-hours", "--dry-run"]),
        (["store", "verify", "--help"], ["--store", "--json"]),
    ],
)
def test_help_lists_verbs_and_options(argv, expect, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr().out
    assert e.value.code == 0 and all(x in out for x in expect), out


def test_empty_tenant_lists_as_empty(tmp_path, capsys):
    import json

    store = str(tmp_path / "s")
    assert main(["concepts", "list", "--store", store, "--tenant", "nobody", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"tenant": "nobody", "version": None, "concepts": []}
    assert main(["concepts", "list", "--store", store, "--tenant", "nobody"]) == 0
    assert "0 concept(s)" in capsys.readouterr().out
