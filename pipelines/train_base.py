"""Train the embedded base model on the toy world (CPU, ~30-40 minutes on 2 cores; seed fixed).

    python -m pipelines.train_base --out cns_ray/data/base/tiny-world [--minutes 35] [--steps 6000] [--seed 0]

Stable Diffusion architecture at toy scale: an exact patch autoencoder (32x32 RGB <-> 8x8x48,
:class:`cns_ray.models.patch_vae.PatchAutoencoder`), a ``UNet2DConditionModel`` with cross-attention at every level,
a ``CLIPTextModel`` trained jointly and its own byte-level BPE tokenizer built from the world's captions. The UNet
predicts x0 (``prediction_type="sample"``; epsilon prediction did not converge at this size here). EMA weights are
saved as a diffusers folder every ``--save-every`` steps (fp16), so a partial run still yields a model; training
state is kept beside it (``train_state.pt``) and a re-run with the same ``--out`` resumes.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("train_base")

RESOLUTION = 32
PATCH = 4
TEXT_DIM = 128
WORLD_VERSION = 2
"""Recorded in training.json: quality tests that need a base trained on this world check it."""
MAX_TOKENS = 48
"""Prompt length (tokens, with start/end): the longest v2 captions (two objects, every word) take ~40; shorter than
CLIP's 77 to save compute."""


def build_tokenizer():
    """Byte-level BPE on the world's words (deterministic), as a transformers fast tokenizer."""
    from cns_ray.models.tokenizer import train_bpe_tokenizer
    from cns_ray.world.scene import all_words, caption, sample_scenes

    corpus = [caption(s) for s in sample_scenes(3000, seed=12345, allow_held_out=True)] + [" ".join(all_words())] * 20
    return train_bpe_tokenizer(corpus, vocab_size=600, model_max_length=MAX_TOKENS)


def build_components(tokenizer, seed: int, channels: tuple[int, int] = (64, 128)):
    """Fresh UNet, text encoder, patch autoencoder and schedulers (weights from ``seed``)."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from cns_ray.models.patch_vae import PatchAutoencoder

    torch.manual_seed(seed)
    latent = 3 * PATCH * PATCH
    unet = UNet2DConditionModel(
        sample_size=RESOLUTION // PATCH,
        in_channels=latent,
        out_channels=latent,
        block_out_channels=tuple(channels),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_DIM,
            intermediate_size=2 * TEXT_DIM,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="sample",
        clip_sample=True,
        clip_sample_range=1.0,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return unet, text_encoder, PatchAutoencoder(patch_size=PATCH), scheduler


def make_pipeline(unet, text_encoder, tokenizer, vae, scheduler):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_folder(out: Path, ema_unet, ema_text, tokenizer, vae, scheduler, meta: dict) -> None:
    """Write the EMA weights as an fp16 diffusers folder, atomically (tmp folder + rename)."""
    import shutil

    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe = make_pipeline(copy.deepcopy(ema_unet).half(), copy.deepcopy(ema_text).half(), tokenizer, vae, scheduler)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    (tmp / "training.json").write_text(json.dumps(meta, indent=1))
    from cns_ray.eval.harness import calibration_prompts

    (tmp / "calibration_prompts.txt").write_text("\n".join(calibration_prompts()) + "\n")  # general neurons' prompts
    keep = out / "train_state.pt"
    if keep.exists():
        shutil.move(str(keep), tmp / "train_state.pt")
    old = out.with_name(out.name + ".old")
    if out.exists():
        out.rename(old)  # a kill from here on leaves .old or .tmp complete: recover() picks it up
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old)


def recover(out: Path) -> None:
    """After a kill inside :func:`save_folder`: put the newest complete folder back at ``out``."""
    for side in (out.with_name(out.name + ".tmp"), out.with_name(out.name + ".old")):
        if not out.exists() and side.exists() and (side / "train_state.pt").exists():
            side.rename(out)
            log.info("recovered %s from %s", out, side.name)


REFERENCE_PROMPTS = (
    "a large plain red circle at the center on a white background",
    "a large striped blue and yellow square with a white dot at the left on a black background",
    "a small plain yellow triangle at the left and a small two-tone purple and orange cross at the right on a grey background",
)
REFERENCE_STEPS = 10
GUARD_EVERY, GUARD_WINDOW, DIVERGED = 250, 100, 1.8
"""Every GUARD_EVERY steps the mean loss of the last GUARD_WINDOW steps is compared with the last good one's;
above DIVERGED x, training goes back to that snapshot at half the learning rate."""


def reference_images(folder: str | Path, prompts=REFERENCE_PROMPTS):
    """Images of ``prompts`` (seed i, 10 DDIM steps, guidance 4) from ``folder``, fp32: uint8 [3, R, R, 3]."""
    import cns_ray.models.patch_vae  # noqa: F401  (registers the autoencoder class for from_pretrained)
    from cns_ray.eval.generate import generate
    from cns_ray.models import load_base_model

    base = load_base_model(str(folder))
    imgs = np.concatenate([generate(base, None, {}, p, 1, i, REFERENCE_STEPS, 4.0) for i, p in enumerate(prompts)])
    return base.base_id, imgs


def record_reference(folder: Path) -> dict:
    """Write reference.json + reference_{i}.png (base_id, generations) that tests compare a load against."""
    from PIL import Image

    base_id, imgs = reference_images(folder)
    for i, img in enumerate(imgs):
        Image.fromarray(img).save(folder / f"reference_{i}.png")
    ref = {"base_id": base_id, "prompts": list(REFERENCE_PROMPTS), "steps": REFERENCE_STEPS, "guidance": 4.0,
           "seeds": list(range(len(REFERENCE_PROMPTS)))}
    (folder / "reference.json").write_text(json.dumps(ref, indent=1))
    return ref


def warm_start(folder: Path, unet, text_encoder, ema_unet, ema_text) -> int:
    """Load a saved folder's (fp16 EMA) UNet and text encoder into the weights and the EMA; returns its step."""
    from safetensors.torch import load_file

    for name, models in (("unet/diffusion_pytorch_model.safetensors", (unet, ema_unet)),
                         ("text_encoder/model.safetensors", (text_encoder, ema_text))):
        sd = {k: v.float() for k, v in load_file(str(folder / name)).items()}
        for m in models:
            missing, unexpected = m.load_state_dict(sd, strict=False)
            if [k for k in missing if "position_ids" not in k] or unexpected:
                raise SystemExit(f"--init-from {folder}: {name} does not fit this architecture "
                                 f"(missing {missing[:3]}, unexpected {unexpected[:3]}): give --channels of that model")
    meta = json.loads((folder / "training.json").read_text()) if (folder / "training.json").exists() else {}
    return int(meta.get("step", 0))


def draw_timesteps(gen: torch.Generator, batch: int, total: int, high_frac: float = 0.0, high_from: int = 700) -> torch.Tensor:
    """Training timesteps [batch]: uniform over [0, total), except the first ``round(high_frac * batch)``, uniform
    over the noisiest [high_from, total). A sample's layout (which colour goes where) is decided at high noise,
    where the x0 prediction is the text's alone."""
    t = torch.randint(0, total, (batch,), generator=gen)  # [B]
    k = int(round(high_frac * batch))
    if k:
        t[:k] = high_from + t[:k] * (total - high_from) // total
    return t


def encode(tokenizer, ids_cache: dict, captions: list[str]) -> torch.Tensor:
    missing = [c for c in captions if c not in ids_cache]
    if missing:
        ids = tokenizer(missing, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        ids_cache.update(zip(missing, ids))
    return torch.stack([ids_cache[c] for c in captions])  # [B, T]


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    p = argparse.ArgumentParser(prog="python -m pipelines.train_base", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="diffusers folder to write (and resume from)")
    p.add_argument("--steps", type=int, default=20000, help="max optimisation steps (default %(default)s)")
    p.add_argument("--minutes", type=float, default=45.0, help="wall-clock budget; stops and saves when spent")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--anneal-steps", type=int, default=0,
                   help="the last N steps before --steps decay the learning rate to 0 (cosine); default 0: constant")
    p.add_argument("--ema", type=float, default=0.995, help="EMA decay (ramped up from 0)")
    p.add_argument("--images", type=int, default=30000,
                   help="world scenes rendered once (seeded); captions are re-drawn with word dropout every step")
    p.add_argument("--dropout", type=float, default=0.1, help="caption dropout (for classifier-free guidance)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--snr-gamma", type=float, default=None,
                   help="Min-SNR-gamma loss weighting (Hang et al. 2023; for x0 prediction the weight is min(SNR, gamma)): "
                        "moves weight from the noisiest steps to the ones where detail (patterns, markings) is drawn; "
                        "default: none, the plain x0 MSE")
    p.add_argument("--text-aux", type=float, default=0.0,
                   help="weight of the auxiliary caption-reading loss on the text encoder (pipelines.text_aux: heads read "
                        "each object's stated class, pattern, colours and marking back from its position word); "
                        "default 0: none")
    p.add_argument("--high-noise-frac", type=float, default=0.0,
                   help="fraction of each batch whose timesteps are drawn from the noisiest range (--high-noise-from "
                        "to 1000), where the layout is decided; default 0: all uniform")
    p.add_argument("--high-noise-from", type=int, default=700)
    p.add_argument("--channels", type=int, nargs=2, default=(64, 128), help="UNet block widths (default %(default)s)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; on a shared 2-core machine 2 threads ran 30x slower than 1 (OpenMP spin-waits)")
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--init-from", default=None,
                   help="a saved model folder (e.g. the shipped one) to continue from when --out holds no training state: "
                        "its EMA weights start both the weights and the EMA, with a fresh optimizer (the folder keeps no "
                        "optimizer state: train_state.pt is not shipped)")
    p.add_argument("--record-only", action="store_true", help="only (re)write the reference outputs of --out")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    if not 0.0 <= args.high_noise_frac <= 1.0 or not 0 <= args.high_noise_from < 1000:
        p.error(f"--high-noise-frac {args.high_noise_frac} must be in [0, 1] and --high-noise-from "
                f"{args.high_noise_from} in [0, 1000) (of the 1000 training timesteps), e.g. 0.5 and 700")
    if args.record_only:
        log.info("reference: %s", record_reference(Path(args.out)))
        return 0
    torch.set_num_threads(args.threads)
    from diffusers import DDPMScheduler

    from cns_ray.world.dataset import to_tensor, world_samples
    from cns_ray.world.scene import sample_caption

    out = Path(args.out)
    t_start = time.monotonic()
    tokenizer = build_tokenizer()
    unet, text_encoder, vae, scheduler = build_components(tokenizer, args.seed, args.channels)
    noise_sched = DDPMScheduler.from_config(scheduler.config)
    alphas = noise_sched.alphas_cumprod
    snr = alphas / (1 - alphas)  # [T]
    recover(out)
    samples = world_samples(args.images, seed=args.seed + 1, resolution=RESOLUTION)
    latents_all = torch.cat([vae.encode(to_tensor([s.image for s in samples[i : i + 2000]])).latent_dist.mean
                             for i in range(0, len(samples), 2000)])  # [N, 48, 8, 8]
    scenes = [s.scene for s in samples]
    log.info("world: %d images rendered in %.1fs; vocab %d; unet %.2fM params, text %.2fM",
             len(samples), time.monotonic() - t_start, len(tokenizer),
             sum(x.numel() for x in unet.parameters()) / 1e6, sum(x.numel() for x in text_encoder.parameters()) / 1e6)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    heads = None
    if args.text_aux > 0:
        from pipelines.text_aux import CaptionHeads, object_targets

        heads = CaptionHeads(TEXT_DIM)
        aux_cache: dict[str, list] = {}

    def add_heads() -> None:
        """The heads' parameter group, once (resuming a run that had none loads its state first)."""
        if heads is not None and len(opt.param_groups) == 1:
            opt.add_param_group({"params": list(heads.parameters())})
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    step, losses, lr_scale, s0_warm = 0, [], 1.0, 0
    state_file = out / "train_state.pt"
    if state_file.exists():
        st = torch.load(state_file, weights_only=False)
        unet.load_state_dict(st["unet"]), text_encoder.load_state_dict(st["text"])
        ema_unet.load_state_dict(st["ema_unet"]), ema_text.load_state_dict(st["ema_text"])
        if heads is None and "aux" in st:
            raise SystemExit(f"{state_file} was trained with the caption-reading heads: resume it with --text-aux W "
                             f"(W > 0; its run used {st.get('text_aux', 'a weight > 0')})")
        if heads is not None and "aux" in st:
            heads.load_state_dict(st["aux"])
        if len(st["opt"]["param_groups"]) > 1:
            add_heads()
        opt.load_state_dict(st["opt"])
        step, losses, lr_scale, s0_warm = st["step"], st["losses"], st.get("lr_scale", 1.0), st.get("s0_warm", 0)
        log.info("resumed from step %d", step)
    elif args.init_from:
        step = warm_start(Path(args.init_from), unet, text_encoder, ema_unet, ema_text)
        s0_warm = step
        log.info("warm start from %s (its EMA weights, step %d; a fresh optimizer re-warms over %d steps)",
                 args.init_from, step, args.warmup)
    add_heads()

    def anneal(at: int) -> float:
        """Learning-rate factor of step ``at``: 1, then a cosine to 0 over the last ``--anneal-steps`` steps."""
        start = args.steps - args.anneal_steps
        if args.anneal_steps <= 0 or at < start:
            return 1.0
        return 0.5 * (1.0 + float(np.cos(np.pi * min(1.0, (at + 1 - start) / args.anneal_steps))))

    ema_pairs = list(zip(list(ema_unet.parameters()) + list(ema_text.parameters()), params))
    empty = tokenizer([""], padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids[0]
    ids_cache: dict = {}
    deadline = t_start + args.minutes * 60
    t0, s0 = time.monotonic(), step

    def state_all() -> dict:
        st = {"unet": unet.state_dict(), "text": text_encoder.state_dict(), "ema_unet": ema_unet.state_dict(),
              "ema_text": ema_text.state_dict(), "opt": opt.state_dict()}
        if heads is not None:
            st["aux"] = heads.state_dict()
        return st

    def load_all(st: dict) -> None:
        unet.load_state_dict(st["unet"]), text_encoder.load_state_dict(st["text"])
        ema_unet.load_state_dict(st["ema_unet"]), ema_text.load_state_dict(st["ema_text"])
        opt.load_state_dict(st["opt"])
        if heads is not None:
            heads.load_state_dict(st["aux"])

    snapshot = None

    def checkpoint(final: bool = False) -> None:
        out.mkdir(parents=True, exist_ok=True)
        torch.save({**state_all(), "step": step, "losses": losses, "lr_scale": lr_scale, "s0_warm": s0_warm,
                    "text_aux": args.text_aux}, state_file)
        meta = {"world": WORLD_VERSION, "channels": list(args.channels), "step": step, "seed": args.seed, "batch": args.batch, "lr": args.lr, "images": args.images,
                "snr_gamma": args.snr_gamma, "text_aux": args.text_aux,
                "high_noise": [args.high_noise_frac, args.high_noise_from] if args.high_noise_frac else None,
                "loss_last100": float(np.mean(losses[-100:])) if losses else None, "final": final}
        save_folder(out, ema_unet, ema_text, tokenizer, vae, scheduler, meta)
        log.info("saved %s at step %d", out, step)

    while step < args.steps and time.monotonic() < deadline:
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        pick = torch.randint(0, len(samples), (args.batch,), generator=gen)
        x0 = latents_all[pick]  # [B, 48, 8, 8]
        cap_rng = np.random.default_rng([args.seed, step])
        texts = [sample_caption(scenes[i], cap_rng) for i in pick.tolist()]
        ids = encode(tokenizer, ids_cache, texts)  # [B, T]
        drop = torch.rand(args.batch, generator=gen) < args.dropout
        ids[drop] = empty
        noise = torch.randn(x0.shape, generator=gen)
        t = draw_timesteps(gen, args.batch, noise_sched.config.num_train_timesteps, args.high_noise_frac, args.high_noise_from)
        noisy = noise_sched.add_noise(x0, noise, t)
        lr = args.lr * lr_scale * min(1.0, (step + 1 - s0_warm) / args.warmup) * anneal(step)
        for g in opt.param_groups:
            g["lr"] = lr
        cond = text_encoder(ids)[0]  # [B, T, 128]
        pred = unet(noisy, t, encoder_hidden_states=cond).sample  # [B, 48, 8, 8]
        if args.snr_gamma is None:
            loss = F.mse_loss(pred, x0)
        else:
            w = snr[t].clamp(max=args.snr_gamma)  # [B]
            loss = (w * (pred - x0).pow(2).mean(dim=(1, 2, 3))).mean()
        diffusion = loss.detach()
        if heads is not None:
            for c in texts:
                if c not in aux_cache:
                    aux_cache[c] = object_targets(tokenizer, c)
            aux = heads.loss(cond, [[] if d else aux_cache[c] for c, d in zip(texts, drop.tolist())])
            loss = loss + args.text_aux * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        losses.append(float(diffusion))  # the diffusion loss alone (the guard and training.json compare it)
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, q in ema_pairs:
                e.mul_(decay).add_(q.detach(), alpha=1 - decay)
        if step % args.log_every == 0:
            rate = (time.monotonic() - t0) / (step - s0)
            left = min((args.steps - step) * rate, deadline - time.monotonic())
            log.info("step %d loss %.4f (mean25 %.4f)%s lr %.2e %.2fs/step, ~%.0fs left",
                     step, losses[-1], float(np.mean(losses[-25:])),
                     f" text-aux {float(aux):.3f}" if heads is not None else "", lr, rate, max(left, 0))
        if step % GUARD_EVERY == 0 and len(losses) >= 2 * GUARD_WINDOW:
            recent = float(np.mean(losses[-GUARD_WINDOW:]))
            if snapshot is not None and recent > DIVERGED * snapshot["mean"]:
                # a loss blow-up (seen once at step ~1950 with 96/192 channels, lr 1e-3): back to the last good
                # weights, optimizer and EMA, at half the learning rate
                lr_scale *= 0.5
                load_all(snapshot["state"])
                log.warning("step %d: loss %.4f > %.1fx the last good %.4f (step %d): restored it, lr scale now %.3g",
                            step, recent, DIVERGED, snapshot["mean"], snapshot["step"], lr_scale)
            elif snapshot is None or recent <= 1.2 * snapshot["mean"]:
                snapshot = {"mean": min(recent, snapshot["mean"]) if snapshot else recent, "step": step,
                            "state": copy.deepcopy(state_all())}
        if step % args.save_every == 0:
            checkpoint()
    checkpoint(final=True)
    log.info("reference: %s", record_reference(out))
    log.info("done: %d steps in %.1f min", step, (time.monotonic() - t_start) / 60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
