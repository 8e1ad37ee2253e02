"""`cns generate` in-process (the replica's code path, no Ray) and the deploy files' Serve config."""

from pathlib import Path

import yaml

from cns_ray.serve.config import ServingConfig
from serve_states import random_state

ROOT = Path(__file__).resolve().parents[3]


def test_generate_in_process_writes_a_png_with_the_tenants_state(tmp_path, tiny_base, capsys):
    from cns_ray.cli import main
    from cns_ray.config import StoreConfig
    from cns_ray.store import ConceptStore

    store = ConceptStore(StoreConfig(uri=str(tmp_path / "store")))
    store.commit("acme", random_state(tiny_base, "acme", 4, tokens=("<rex>",)), parent=None)
    args = ["generate", "--store", str(tmp_path / "store"), "--tenant", "acme", "a photo of <rex> dog", "--steps", "2", "--seed", "3"]
    assert main([*args, "-o", str(tmp_path / "a.png")]) == 0
    assert "version 1" in capsys.readouterr().err
    assert main([*args, "--tenant", "nobody", "-o", str(tmp_path / "b.png")]) == 0  # a tenant without versions: the base
    a, b = (tmp_path / "a.png").read_bytes(), (tmp_path / "b.png").read_bytes()
    assert a[:8] == b"\x89PNG\r\n\x1a\n" and a != b


def test_serve_yaml_is_a_valid_serve_config_for_the_app():
    from ray.serve.schema import ServeDeploySchema

    for path, key in ((ROOT / "deploy/serve.yaml", None), (ROOT / "deploy/kuberay/rayservice.yaml", "serveConfigV2")):
        doc = yaml.safe_load(path.read_text())
        if key:
            doc = yaml.safe_load(doc["spec"][key])
        schema = ServeDeploySchema.model_validate(doc) if hasattr(ServeDeploySchema, "model_validate") else ServeDeploySchema.parse_obj(doc)
        app = schema.applications[0]
        assert app.import_path == "cns_ray.serve.app:app_builder"
        ServingConfig.from_dict(app.args)  # every arg is a known, valid ServingConfig field
