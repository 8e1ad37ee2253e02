"""pipelines/train_base.py on a toy budget: it writes a loadable diffusers folder and its training record, resumes
from its own state, and the loss options (Min-SNR weighting, the final cosine anneal) are what it records and uses."""

import json

import pytest

from pipelines import train_base


def run(out, *extra):
    argv = ["--out", str(out), "--images", "48", "--batch", "2", "--channels", "32", "64", "--save-every", "2",
            "--log-every", "1", "--warmup", "1", "--minutes", "5", *extra]
    assert train_base.main(argv) == 0
    return json.loads((out / "training.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "toy"
    first = run(out, "--steps", "3", "--snr-gamma", "5")
    return out, first


def test_writes_a_loadable_folder_with_its_record(trained):
    import cns_ray.models.patch_vae  # noqa: F401
    from cns_ray.models import load_base_model

    out, meta = trained
    assert meta["step"] == 3 and meta["final"] and meta["snr_gamma"] == 5.0 and meta["channels"] == [32, 64]
    assert (out / "train_state.pt").exists() and (out / "reference.json").exists()
    base = load_base_model(str(out))
    assert base.resolution == 32 and base.unet.config.block_out_channels == [32, 64]


def test_resumes_from_its_state_and_anneals_to_zero(trained, caplog):
    out, _ = trained
    caplog.set_level("INFO", logger="train_base")
    meta = run(out, "--steps", "6", "--anneal-steps", "2")
    assert meta["step"] == 6 and meta["snr_gamma"] is None
    text = caplog.text
    assert "resumed from step 3" in text
    lrs = {int(line.split("step ")[1].split()[0]): float(line.split(" lr ")[1].split()[0])
           for line in text.splitlines() if " lr " in line and "loss" in line}
    assert lrs[4] == pytest.approx(1e-3) and lrs[5] == pytest.approx(0.5e-3) and lrs[6] == pytest.approx(0.0, abs=1e-9)


def test_text_aux_heads_train_resume_and_are_not_shipped(tmp_path, caplog):
    caplog.set_level("INFO", logger="train_base")
    out = tmp_path / "aux"
    run(out, "--steps", "2", "--text-aux", "0.1")
    meta = run(out, "--steps", "4", "--text-aux", "0.1", "--high-noise-frac", "0.5")
    assert meta["text_aux"] == 0.1 and meta["step"] == 4 and meta["high_noise"] == [0.5, 700]
    aux = [float(line.split("text-aux ")[1].split()[0]) for line in caplog.text.splitlines() if "text-aux " in line]
    assert len(aux) == 4 and all(0.5 < a < 5.0 for a in aux)  # a cross-entropy over 4-8 values, logged every step
    import torch

    assert "aux" in torch.load(out / "train_state.pt", weights_only=False)
    assert not list(out.glob("**/*aux*"))  # the heads stay in train_state.pt: the model folder is a plain pipeline
    with pytest.raises(SystemExit, match="--text-aux"):
        run(out, "--steps", "5")


def test_high_noise_timesteps_are_drawn_from_the_noisiest_range_for_that_fraction_of_the_batch():
    import torch

    t = torch.stack([train_base.draw_timesteps(torch.Generator().manual_seed(i), 16, 1000, 0.25, 700) for i in range(200)])
    assert t.shape == (200, 16) and int(t.min()) >= 0 and int(t.max()) < 1000
    assert int(t[:, :4].min()) >= 700 and float((t[:, 4:] >= 700).float().mean()) == pytest.approx(0.3, abs=0.03)
    same = train_base.draw_timesteps(torch.Generator().manual_seed(3), 16, 1000)
    assert torch.equal(same, torch.randint(0, 1000, (16,), generator=torch.Generator().manual_seed(3)))  # 0: uniform
    with pytest.raises(SystemExit):
        train_base.main(["--out", "x", "--high-noise-frac", "1.5"])
