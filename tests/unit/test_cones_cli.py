"""`--method cones` through the learning entrypoint's flags (no Ray), and `cns concepts show/list` say the method."""

import argparse
import json
import shlex

import pytest
import torch

from cns_ray.config import LearnerConfig, StoreConfig


def test_method_flag_round_trips_through_the_job_entrypoint():
    from cns_ray.cli import add_common
    from cns_ray.cli.learn_cmds import add_learn_args, learn_request_and_config
    from cns_ray.jobs.submit import learn_entrypoint
    from cns_ray.learn import ConceptRequest

    req = ConceptRequest("acme", "kit", "cat", "s3://b/in/kit")
    cfg = LearnerConfig(steps=5, method="cones", cones_ratio=0.05)
    argv = shlex.split(learn_entrypoint(req, cfg, "s3://b/store", "tiny"))
    assert argv[argv.index("--method") + 1] == "cones"
    parser = argparse.ArgumentParser()
    add_common(parser)
    add_learn_args(parser)
    assert learn_request_and_config(parser.parse_args(argv[3:])) == (req, cfg)
    # the default stays cns, and is not even spelled out
    plain = shlex.split(learn_entrypoint(req, LearnerConfig(steps=5), "s3://b/store", "tiny"))
    assert "--method" not in plain
    assert learn_request_and_config(parser.parse_args(plain[3:]))[1].method == "cns"


def test_concepts_show_and_list_print_the_method(tmp_path, capsys):
    from cns_ray.cli import main
    from cns_ray.store import ConceptRecord, ConceptStore, TenantState

    uri = str(tmp_path / "s")
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    st = TenantState.empty("acme", "0123456789abcdef")
    st.concepts.append(ConceptRecord(name="kit", token="<kit>", class_word="cat", method="cones",
                                     neurons={layer: torch.tensor([1, 5, 9])}, shapes={layer: (8, 4)}))
    ConceptStore(StoreConfig(uri=uri)).commit("acme", st, parent=None)
    assert main(["concepts", "show", "--store", uri, "--tenant", "acme", "kit", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"] == "cones" and info["neurons"] == 3
    assert main(["concepts", "list", "--store", uri, "--tenant", "acme"]) == 0
    assert "cones" in capsys.readouterr().out


def test_http_learn_refuses_an_unknown_method_before_reading_images():
    import asyncio

    import pytest

    from cns_ray.errors import ApiError
    from cns_ray.serve.config import ServingConfig
    from cns_ray.serve.learn_route import submit_learning

    class NoImages:
        def __iter__(self):
            raise AssertionError("images must not be read for a refused method")

    with pytest.raises(ApiError) as e:
        asyncio.run(submit_learning(ServingConfig(), None, "acme", NoImages(), "kit", "cat", None, 5, method="lora"))
    assert e.value.status == 422 and "cns" in str(e.value) and "cones" in str(e.value)


class _Upload:
    """A stand-in for FastAPI's UploadFile: a name and async ``read``."""

    def __init__(self, data: bytes, filename: str = "a.png"):
        self.data, self.filename = data, filename

    async def read(self, _limit: int = -1) -> bytes:
        return self.data


def test_http_cones_joint_field_parses_like_the_cli_flag():
    from cns_ray.serve.learn_route import cones_joint_field

    assert cones_joint_field("rex, mia", "cones", "rex_mia") == ("rex", "mia")
    assert cones_joint_field("rex,mia,zed", "cones", "trio") == ("rex", "mia", "zed")
    assert cones_joint_field(None, "cns", "x") == () and cones_joint_field(" , ", "cns", "x") == ()



@pytest.mark.parametrize(("value", "method", "status", "says"), [
    ("rex,mia", "cns", 422, ["cones_joint='rex,mia'", "needs method=cones", "method='cns'"]),
    ("rex,mia", "synthesize", 422, ["needs method=cones"]),
    ("rex", "cones", 422, ["names 1 concept(s)", "2 to 8", "e.g. 'rex,mia'"]),
    ("rex,rex", "cones", 422, ["names a concept twice"]),
    ("rex,pair", "cones", 422, ["names 'pair', the concept being learned"]),
    ("rex,../x", "cones", 422, ["cones_joint='rex,../x'", "concept"]),
    (",".join(f"c{i}" for i in range(9)), "cones", 422, ["names 9 concept(s)", "2 to 8"]),
], ids=["not-cones", "synthesize", "one-name", "twice", "itself", "bad-name", "too-many"])
def test_http_learn_refuses_a_bad_cones_joint_before_reading_images(value, method, status, says):
    import asyncio

    from cns_ray.errors import ApiError
    from cns_ray.serve.config import ServingConfig
    from cns_ray.serve.learn_route import cones_joint_field, submit_learning

    class NoImages:
        def __iter__(self):
            raise AssertionError("images must not be read (nor saved) for a refused cones_joint")

    with pytest.raises(ApiError) as e:
        if method == "synthesize":  # the ingress checks the field before the synthesize branch
            cones_joint_field(value, method, "pair")
        else:
            asyncio.run(submit_learning(ServingConfig(), None, "acme", NoImages(), "pair", "pair", None, 5,
                                        method=method, cones_joint=value))
    assert e.value.status == status and all(s in str(e.value) for s in says), str(e.value)


def test_http_cones_joint_reaches_the_job_config(monkeypatch):
    """A valid field is submitted as LearnerConfig.cones_joint, as `cns learn --cones-joint rex,mia` does."""
    import asyncio
    import io

    from PIL import Image

    from cns_ray.serve import learn_route
    from cns_ray.serve.config import ServingConfig

    submitted = []

    class Remote:
        async def remote(self, request, cfg):  # the scheduler actor's ``submit``
            submitted.append((request, cfg))
            return "job-1"

    monkeypatch.setattr(learn_route, "scheduler", lambda cfg: type("Actor", (), {"submit": Remote()})())
    monkeypatch.setattr(learn_route, "save_uploads", lambda store, tenant, pngs: "store:uploads/acme/x")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="PNG")
    job = asyncio.run(learn_route.submit_learning(ServingConfig(use_gpu=False), None, "acme", [_Upload(buf.getvalue())],
                                                  "pair", "pair", None, 4, method="cones", cones_joint="rex, mia"))
    assert job == "job-1"
    (request, cfg), = submitted
    assert request["concept"] == "pair" and LearnerConfig.from_dict(cfg).cones_joint == ("rex", "mia")
    assert LearnerConfig.from_dict(cfg).method == "cones"
