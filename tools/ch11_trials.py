"""Trial runs behind chapter 11's full-budget recipe: the text-conditioned latent UNet of the chapter,
trained with one choice changed at a time, and scored as the chapter scores it (prompt adherence of
300 samples, 30 per digit, from the same starting noise, and the Fréchet-distance ratio on the digit
classifier's features) at guidance weights 1, 2, 4 and 8.

    python tools/ch11_trials.py --base 32 --steps 4000 --ema 0.999      # the old recipe (+ EMA weights)
    python tools/ch11_trials.py --base 16 --steps 8000 --cosine --seed 2  # width 16, cosine decay
    python tools/ch11_trials.py --base 16 --steps 8000 --cosine --pooled --seed 2

Each run prints one JSON line per evaluation step: ``{"raw w4": [adherence, FD ratio], ...}``
(``ema ...`` too with ``--ema``). About 10 minutes of one CPU core for 8000 steps at width 16.
The autoencoder, captions, tokenizer and classifier are made as in the chapter (seed 0); ``--seed``
changes the denoiser's initialisation and its training draws.

Measured on 2026-11-29 (one CPU core each, two runs at a time on a 2-core machine), adherence / FD ratio
of the raw weights at w = 4 and w = 8. Runs marked * were made with a first draft of this script (the
same loop and scoring, the initialisation drawn differently: A and B0 without a per-run seed, C with the
pooled layer attached after the UNet was built), so they are not bit-for-bit reproducible with it.

    A*  --base 32 --steps 4000 --ema 0.999           0.877 / 0.92   0.877 / 1.51  (EMA: 0.700, 0.733)
    B0* --base 16 --steps 8000 --cosine              0.917 / 0.39   0.953 / 0.45
    B1  ... --seed 1                                 0.960 / 0.50   0.977 / 0.47
    B2  ... --seed 2                                 0.793 / 0.97   0.890 / 0.72
    C0* --base 16 --steps 8000 --cosine --pooled     0.913 / 0.53   0.933 / 0.50
    C2* ... --seed 2                                 0.910 / 0.56   0.933 / 0.52
    D0  --steps 7000 --batch 128 --cosine --pooled   0.990 / 0.42   0.990 / 0.47
    D2  ... --seed 2                                 0.957 / 0.36   0.973 / 0.40
    E2  --steps 5000 --batch 128 --cosine --pooled --seed 2   0.917 / 0.34   0.933 / 0.40
    E0  --steps 6000 --batch 128 --cosine --pooled           0.967 / 0.39   0.980 / 0.46  (chapter 11's recipe)

The notebook itself (its own autoencoder and classifier) gave 0.873 / 0.61 and 0.917 / 0.54 at 5000
steps of 128, and 0.907 / 0.56 and 0.953 / 0.52 at 6000.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import torch
import torch.nn.functional as F

from diffusion_edu import DDPMSchedule, alphas_cumprod, ddpm_betas, load_digits
from diffusion_edu.autoencoder import Autoencoder
from diffusion_edu.metrics import classifier_accuracy, frechet_distance
from diffusion_edu.nets import Classifier, UNet
from diffusion_edu.pipelines import StableDiffusion
from diffusion_edu.text import TextEncoder, Tokenizer, attribute_thresholds, caption_digits
from diffusion_edu.training import train
from diffusion_edu.utils import seed

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=int, default=16, help="UNet base channels")
    p.add_argument("--steps", type=int, default=8000, help="denoiser training steps")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--cosine", action="store_true", help="decay the learning rate along a half cosine to 0")
    p.add_argument("--pooled", action="store_true", help="UNet(pooled_context=True)")
    p.add_argument("--ema", type=float, default=0.0, help="also score EMA weights with this decay")
    p.add_argument("--evals", default=None, help="comma-separated steps to evaluate at (default: the last)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=64, help="denoiser batch size")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--ae-steps", type=int, default=1000)
    p.add_argument("--clf-steps", type=int, default=500)
    p.add_argument("--per-digit", type=int, default=30, help="samples per digit prompt")
    p.add_argument("--sampler-steps", type=int, default=20)
    args = p.parse_args(argv)
    for name in ("base", "steps", "batch", "threads", "ae_steps", "clf_steps", "per_digit", "sampler_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv=None) -> list[dict]:
    a = parse_args(argv)
    evals = sorted({int(s) for s in a.evals.split(",")}) if a.evals else [a.steps]
    torch.set_num_threads(a.threads)
    g = seed(0)
    start = time.time()
    x_train, y_train = load_digits(32, "train")
    x_val, _ = load_digits(32, "val")
    ae = train(Autoencoder(1, 4, 4, 8, num_res_blocks=0), lambda m, b, gn: m.loss(b, kl_weight=1e-4, generator=gn).total,
               x_train, a.ae_steps, batch_size=32, lr=2e-3, ema_decay=0.0, generator=g, progress=False).model.eval()
    ae.fit_scale(x_train)
    with torch.no_grad():
        z_train = ae.encode_scaled(x_train)
    thresholds = attribute_thresholds(x_train, y_train)
    captions = [caption_digits(x_train, y_train, "mix", generator=g, thresholds=thresholds) for _ in range(4)]
    tokenizer = Tokenizer.from_texts([c for draw in captions for c in draw]
                                     + caption_digits(x_train, y_train, "en", thresholds=thresholds)
                                     + caption_digits(x_train, y_train, "zh", thresholds=thresholds))

    sched = DDPMSchedule(alphas_cumprod(ddpm_betas(1000)))
    torch.manual_seed(1000 + a.seed)
    text = TextEncoder(tokenizer.vocab, dim=32, depth=2, heads=2, max_length=16)
    net = UNet(4, 4, base_channels=a.base, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
               context_dim=32, pooled_context=a.pooled)
    params = list(net.parameters()) + list(text.parameters())
    opt = torch.optim.Adam(params, lr=a.lr)
    # eta_k = lr (1 + cos(pi k / K)) / 2, written in closed form
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, a.steps) / a.steps))
                                              ) if a.cosine else None
    ema_net, ema_text = copy.deepcopy(net), copy.deepcopy(text)
    # the digit classifier, built after the denoiser (the order of the runs quoted in chapter 11)
    x8_train, y8_train = load_digits(8, "train")
    clf = train(Classifier(1, 10), lambda m, b, gn: F.cross_entropy(m(b[0]), b[1]), (x8_train, y8_train),
                a.clf_steps, batch_size=128, lr=2e-3, ema_decay=0.0, generator=g, progress=False).model.eval()

    def features(images):
        with torch.no_grad():
            return clf.features(F.avg_pool2d(images.clamp(-1, 1), 4))

    val_feats = features(x_val)

    def fd_ratio(images):
        real = x_train[torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))[:len(images)]]
        return frechet_distance(features(images), val_feats) / frechet_distance(features(real), val_feats)

    prompts_en = [f"a {w}" for w in DIGIT_WORDS]
    labels = torch.arange(10).repeat_interleave(a.per_digit)

    def evaluate():
        scores = {}
        for name, (n_, t_) in {"raw": (net, text), "ema": (ema_net, ema_text)}.items():
            if name == "ema" and not a.ema:
                continue
            n_.eval()
            t_.eval()
            pipe = StableDiffusion(ae, n_, t_, sched, prediction="eps", image_size=32)
            for w in (1.0, 2.0, 4.0, 8.0):
                with torch.no_grad():
                    imgs = pipe(prompts_en, steps=a.sampler_steps, guidance=w, num_images_per_prompt=a.per_digit,
                                generator=torch.Generator().manual_seed(1))
                    acc = classifier_accuracy(clf(F.avg_pool2d(imgs, 4)), labels)
                scores[f"{name} w{w:g}"] = [round(acc, 3), round(float(fd_ratio(imgs)), 2)]
            n_.train()
            t_.train()
        return scores

    gen = torch.Generator().manual_seed(a.seed)
    cpu, rows = 0.0, []
    for step in range(1, a.steps + 1):
        c0 = time.process_time()
        idx = torch.randint(len(z_train), (a.batch,), generator=gen)
        prompts = [captions[(step - 1) % 4][i] for i in idx.tolist()]
        drop = torch.rand(a.batch, generator=gen) < 0.1
        ctx, mask = text.encode(["" if d else p for p, d in zip(prompts, drop)])
        n = torch.randint(sched.num_steps, (a.batch,), generator=gen)
        eps = torch.randn(z_train[idx].shape, generator=gen)
        x_n, _ = sched.perturb(z_train[idx], n, noise=eps)
        loss = (net(x_n, n, context=ctx, context_mask=mask) - eps).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if decay is not None:
            decay.step()
        if a.ema:
            with torch.no_grad():
                for p_ema, p in zip(list(ema_net.parameters()) + list(ema_text.parameters()), params):
                    p_ema.lerp_(p, 1 - a.ema)
        cpu += time.process_time() - c0
        if step in evals:
            row = dict(step=step, train_cpu_s=round(cpu, 1), ms_per_step=round(1e3 * cpu / step, 1),
                       wall_s=round(time.time() - start), **evaluate())
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
