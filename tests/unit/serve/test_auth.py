"""API keys -> tenants: hashes only at rest, the admin key, and every refusal."""

import json

import pytest

from cns_ray.errors import ConfigError, InvalidNameError
from cns_ray.serve.auth import AuthError, KeyRing, add_key_to_file, hash_key, parse_env_keys, read_keys_file


def _ring():
    return KeyRing({hash_key("ka"): "acme", hash_key("kb"): "globex"}, admin_hash=hash_key("root"))


def test_bearer_and_x_api_key_resolve_to_their_tenant():
    ring = _ring()
    assert ring.authenticate("Bearer ka", None, None).tenant == "acme"
    assert ring.authenticate(None, "kb", None).tenant == "globex"
    assert not ring.authenticate("Bearer ka", None, None).is_admin


@pytest.mark.parametrize(
    "authorization,api_key,header,status",
    [
        (None, None, None, 401),  # no key
        ("Bearer nope", None, None, 401),  # unknown key
        ("Basic ka", None, None, 401),  # wrong scheme
        ("Bearer ka", None, "globex", 403),  # a tenant key acting on another tenant
        ("Bearer root", None, None, 400),  # admin without a tenant
    ],
)
def test_refusals(authorization, api_key, header, status):
    with pytest.raises(AuthError) as e:
        _ring().authenticate(authorization, api_key, header)
    assert e.value.status == status


def test_admin_acts_on_the_named_tenant_and_names_are_validated():
    ring = _ring()
    p = ring.authenticate("Bearer root", None, "globex")
    assert p.tenant == "globex" and p.is_admin
    with pytest.raises(InvalidNameError):
        ring.authenticate("Bearer root", None, "../etc")


def test_env_keys_are_hashed_and_checked(monkeypatch):
    assert parse_env_keys("k1:acme, k2:globex") == {hash_key("k1"): "acme", hash_key("k2"): "globex"}
    with pytest.raises(ConfigError):
        parse_env_keys("justakey")
    monkeypatch.setenv("CNS_API_KEYS", "k1:acme")
    monkeypatch.setenv("CNS_ADMIN_KEY", "adm")
    ring = KeyRing.from_config(None, {}, None, read_env=True)
    assert ring.authenticate("Bearer k1", None, None).tenant == "acme"
    assert ring.authenticate("Bearer adm", None, "x1").is_admin
    assert KeyRing.from_config(None, {}, None, read_env=False).n_keys == 0


def test_keys_file_holds_hashes_only(tmp_path):
    path = tmp_path / "keys.json"
    key = add_key_to_file(path, "acme")
    text = path.read_text()
    assert key not in text and hash_key(key) in text
    assert read_keys_file(path) == {hash_key(key): "acme"}
    ring = KeyRing.from_config(str(path), {}, None, read_env=False)
    assert ring.authenticate(f"Bearer {key}", None, None).tenant == "acme"
    path.write_text(json.dumps({"plain-key": "acme"}))
    with pytest.raises(ConfigError, match="sha256"):
        read_keys_file(path)
