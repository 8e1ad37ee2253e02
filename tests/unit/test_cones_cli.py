"""`--method cones` through the learning entrypoint's flags (no Ray), and `cns concepts show/list` say the method."""

import argparse
import json
import shlex

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
