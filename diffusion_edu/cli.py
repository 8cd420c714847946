r"""The command line: ``python -m diffusion_edu {train, sample, bench, train-latent, generate}``.

Train a DDPM (Ho et al., 2020) image model with the library's :class:`~diffusion_edu.nets.unet.UNet`,
:func:`~diffusion_edu.losses.ddpm_loss` and :func:`~diffusion_edu.training.train`::

    python -m diffusion_edu train --dataset digits --steps 3000 --device cuda --out runs/digits
    python -m diffusion_edu train --out runs/digits --steps 6000 --resume   # continue exactly
    python -m diffusion_edu sample --checkpoint runs/digits/model.pt --sampler dpm_solver --steps 10 --out grid.png
    python -m diffusion_edu bench --config digits --device cpu

A small Stable Diffusion on the digits with captions (English and Chinese) measured from the images
(:func:`~diffusion_edu.pipelines.train_latent`: the autoencoder, then the text-conditioned latent
UNet or DiT), and text-to-image from it::

    python -m diffusion_edu train-latent --steps 4000 --out runs/latent
    python -m diffusion_edu generate --pipeline runs/latent --prompt "a thick seven" --guidance 4 --seed 0 --out grid.png

The same training runs on several GPUs (or CPU processes) with PyTorch DDP::

    torchrun --nproc_per_node=4 -m diffusion_edu train --dataset cifar10 --data-root ~/data ...

A run directory holds ``config.json`` (the arguments), ``train_state.pt`` (model, EMA,
optimiser, step, losses and every process's random-generator state; written every
``--checkpoint-every`` steps, at the end and on Ctrl-C), ``model.pt`` (the EMA weights with
the diffusion settings, read by ``sample``), ``losses.txt`` and ``samples.png``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
from pathlib import Path

import torch

from . import samplers
from .denoiser import Denoiser, clip_x0
from .guidance import cfg
from .losses import ddpm_loss
from .nets.unet import UNet
from .parameterization import PREDICTIONS
from .pipelines import SAMPLERS as PIPELINE_SAMPLERS
from .plot import save_images
from .schedules import SPACINGS, DDPMSchedule, alphas_cumprod, ddpm_betas, time_grid
from .training import load_model, save_model, train

__all__ = ["main", "build_parser"]

# Settings fixed when a run starts; `--resume` takes them from config.json.
_RUN_SETTINGS = (
    "dataset", "data_root", "size", "batch_size", "lr", "base_channels", "channel_mults",
    "num_res_blocks", "attention_resolutions", "dropout", "class_conditional", "label_dropout",
    "schedule", "timesteps", "prediction", "ema_decay", "grad_clip", "seed",
)

# name on the command line -> (sampler, takes a generator)
SAMPLERS = {
    "ddpm": (samplers.ddpm_ancestral, True), "ddim": (samplers.ddim, True), "heun": (samplers.heun, True),
    "dpm_solver": (samplers.dpm_solver, False), "euler_maruyama": (samplers.euler_maruyama, True),
    "probability_flow": (samplers.probability_flow, False),
}


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip()) if text.strip() else ()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m diffusion_edu", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a DDPM image model")
    t.add_argument("--dataset", default="digits", choices=("digits", "mnist", "fashion-mnist", "cifar10"))
    t.add_argument("--data-root", default=None, help="folder with the dataset files (not digits); nothing is downloaded")
    t.add_argument("--size", type=int, default=None, help="digits only: 8, 16 or 32 (default 8)")
    t.add_argument("--steps", type=int, required=True, help="total optimiser steps (a resumed run continues to this)")
    t.add_argument("--out", required=True, help="run directory, e.g. runs/NAME")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when present)")
    t.add_argument("--batch-size", type=int, default=64, help="images per step and per process")
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("--base-channels", type=int, default=32)
    t.add_argument("--channel-mults", type=_ints, default=(1, 2))
    t.add_argument("--num-res-blocks", type=int, default=1)
    t.add_argument("--attention-resolutions", type=_ints, default=(2,), help="downsampling factors, e.g. 2,4")
    t.add_argument("--dropout", type=float, default=0.0)
    t.add_argument("--class-conditional", action="store_true", help="condition on labels (null class for CFG)")
    t.add_argument("--label-dropout", type=float, default=0.1, help="with --class-conditional: P(label -> null)")
    t.add_argument("--schedule", default="cosine", choices=("linear", "cosine"))
    t.add_argument("--timesteps", type=int, default=1000)
    t.add_argument("--prediction", default="eps", choices=PREDICTIONS,
                   help="what the network predicts (trained by MSE on its own target)")
    t.add_argument("--ema-decay", type=float, default=0.999)
    t.add_argument("--grad-clip", type=float, default=1.0)
    t.add_argument("--checkpoint-every", type=int, default=500)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on for CUDA, off on CPU)")
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format (default: on for CUDA)")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--num-samples", type=int, default=64, help="samples.png at the end (0: none)")
    t.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("sample", help="sample a trained model into a PNG grid")
    s.add_argument("--checkpoint", required=True, help="model.pt of a run")
    s.add_argument("--sampler", default="ddim", choices=tuple(SAMPLERS))
    s.add_argument("--steps", type=int, default=None,
                   help="sampling steps (default: 50; ddpm: every training step)")
    s.add_argument("--spacing", default="leading", choices=SPACINGS,
                   help="time grid (diffusers' 'leading', 'trailing', 'linspace'; 'uniform', 'logsnr', 'karras')")
    s.add_argument("--order", type=int, default=2, choices=(1, 2, 3), help="dpm_solver: order")
    s.add_argument("--method", default="heun", choices=samplers.ODE_METHODS, help="probability_flow: integrator")
    s.add_argument("--eta", type=float, default=0.0, help="DDIM noise (0 deterministic, 1 DDPM-like)")
    s.add_argument("--churn", type=float, default=0.0, help="heun: S_churn of Karras et al. (2022)")
    s.add_argument("--num-samples", type=int, default=64)
    s.add_argument("--no-clip", action="store_true",
                   help="do not clip the predicted clean image to [-1, 1] at each step")
    s.add_argument("--nrow", type=int, default=8)
    s.add_argument("--labels", type=_ints, default=None,
                   help="class-conditional models: labels to cycle through (default 0..K-1)")
    s.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance weight w: eps(x) + w (eps(x, y) - eps(x)); 1 = conditional")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default=None)
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    s.add_argument("--out", required=True, help="PNG file")
    s.add_argument("--save-tensor", default=None, help="also save the samples as a .pt tensor")

    b = sub.add_parser("bench", help="training throughput: our UNet against diffusers.UNet2DModel "
                                     "(latent: UNet2DConditionModel)")
    b.add_argument("--config", default="digits", choices=("digits", "cifar10", "latent"),
                   help="latent: the text-conditioned latent UNet against diffusers.UNet2DConditionModel")
    b.add_argument("--device", default=None)
    b.add_argument("--batch-size", type=int, default=None)
    b.add_argument("--steps", type=int, default=None)
    b.add_argument("--warmup", type=int, default=None)
    b.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None)
    b.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    b.add_argument("--compile", action="store_true")
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--repeats", type=int, default=1, help="independent runs (fresh models); medians reported")
    b.add_argument("--json", default=None, help="also write the rows of every run to this JSON file")
    tl = sub.add_parser("train-latent", help="train a text-to-image latent diffusion pipeline on captioned digits")
    tl.add_argument("--steps", type=int, required=True, help="denoiser steps (a resumed run continues to this)")
    tl.add_argument("--autoencoder-steps", type=int, default=None, help="autoencoder steps (default: steps / 2)")
    tl.add_argument("--out", required=True, help="pipeline directory (its training state too)")
    tl.add_argument("--net", default="unet", choices=("unet", "dit"))
    tl.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when present)")
    tl.add_argument("--batch-size", type=int, default=64)
    tl.add_argument("--lr", type=float, default=5e-4)
    tl.add_argument("--base-channels", type=int, default=64)
    tl.add_argument("--autoencoder-channels", type=int, default=32)
    tl.add_argument("--text-dim", type=int, default=64)
    tl.add_argument("--schedule", default="cosine", choices=("linear", "cosine"))
    tl.add_argument("--timesteps", type=int, default=1000)
    tl.add_argument("--prediction", default="eps", choices=PREDICTIONS)
    tl.add_argument("--prompt-dropout", type=float, default=0.1, help="P(caption -> empty prompt), for guidance")
    tl.add_argument("--ema-decay", type=float, default=0.999)
    tl.add_argument("--checkpoint-every", type=int, default=500)
    tl.add_argument("--seed", type=int, default=0)
    tl.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    tl.add_argument("--no-progress", action="store_true")

    gn = sub.add_parser("generate", help="text to image with a pipeline written by train-latent")
    gn.add_argument("--pipeline", required=True, help="pipeline directory")
    gn.add_argument("--prompt", required=True, action="append", help="a prompt (repeat for several)")
    gn.add_argument("--negative-prompt", default=None)
    gn.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance weight w (1: none)")
    gn.add_argument("--steps", type=int, default=20)
    gn.add_argument("--sampler", default="dpm_solver", choices=tuple(PIPELINE_SAMPLERS))
    gn.add_argument("--num-samples", type=int, default=8, help="images per prompt")
    gn.add_argument("--nrow", type=int, default=8)
    gn.add_argument("--seed", type=int, default=0)
    gn.add_argument("--device", default=None)
    gn.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    gn.add_argument("--out", required=True, help="PNG file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return {"train": _train, "sample": _sample, "bench": _bench, "train-latent": _train_latent,
            "generate": _generate}[args.command](args)


# -- train ---------------------------------------------------------------------------------
def _train(args) -> int:
    out = Path(args.out)
    state_path = out / "train_state.pt"
    if args.resume:
        if not (out / "config.json").exists():
            raise SystemExit(f"--resume: no run to resume in {out} (config.json is missing)")
        saved = json.loads((out / "config.json").read_text())
        for key in _RUN_SETTINGS:  # the run's settings win over the command line
            if key in saved:
                setattr(args, key, tuple(saved[key]) if isinstance(saved[key], list) else saved[key])
    elif state_path.exists():
        raise SystemExit(f"{out} already holds a run: pass --resume to continue it, or choose another --out")

    rank, world, device = _init_distributed(args.device)
    x, y = _load(args)
    torch.manual_seed(args.seed)  # identical initial weights in every process
    num_classes = int(y.max()) + 1 if args.class_conditional else None
    net = UNet(x.shape[1], x.shape[1], args.base_channels, args.channel_mults, args.num_res_blocks,
               args.attention_resolutions, args.dropout, num_classes)
    schedule = DDPMSchedule(alphas_cumprod(ddpm_betas(args.timesteps, args.schedule)))
    prediction = getattr(args, "prediction", "eps")
    cuda = device.type == "cuda"
    bf16 = cuda if args.bf16 is None else args.bf16
    channels_last = cuda if args.channels_last is None else args.channels_last
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        config = {k: v for k, v in vars(args).items() if k not in ("command",)}
        (out / "config.json").write_text(json.dumps(config, indent=2, default=list))
        n_params = sum(p.numel() for p in net.parameters())
        print(f"UNet with {n_params:,} parameters; {len(x)} images {tuple(x.shape[1:])}; "
              f"device {device}, {world} process(es), bf16={bf16}, channels_last={channels_last}, "
              f"compile={args.compile}", file=sys.stderr)

    null = net.null_label

    def loss_fn(model, batch, g):
        images, labels = batch
        if num_classes is None:
            return ddpm_loss(model, images, schedule, prediction=prediction, generator=g)
        return ddpm_loss(model, images, schedule, prediction=prediction, generator=g, y=labels,
                         label_dropout=args.label_dropout, null_label=null)

    # every process draws its own batches: one generator per rank, restored on --resume
    gen = torch.Generator().manual_seed(args.seed * 1_000_003 + rank)
    try:
        result = train(net, loss_fn, (x, y), args.steps, batch_size=args.batch_size, lr=args.lr,
                       ema_decay=args.ema_decay, grad_clip=args.grad_clip, generator=gen,
                       device=device, checkpoint=state_path, checkpoint_every=args.checkpoint_every,
                       progress=not args.no_progress, amp_dtype=torch.bfloat16 if bf16 else None,
                       channels_last=channels_last, compile=args.compile)
    except KeyboardInterrupt:
        if rank == 0:
            print(f"\ninterrupted: continue with the same command and --resume ({state_path})", file=sys.stderr)
        _finish_distributed(sync=False)
        return 130
    if rank == 0:
        ema = result.ema_model.to(memory_format=torch.contiguous_format)
        meta = dict(dataset=args.dataset, image_size=x.shape[-1], channels=x.shape[1],
                    schedule=args.schedule, timesteps=args.timesteps, prediction=prediction, step=args.steps)
        save_model(ema, out / "model.pt", meta=meta)
        (out / "losses.txt").write_text("".join(f"{v:.6g}\n" for v in result.losses))
        if args.num_samples:
            g = torch.Generator().manual_seed(args.seed)
            den = clip_x0(Denoiser(ema, schedule, prediction))
            x_T = torch.randn((args.num_samples, x.shape[1], x.shape[-1], x.shape[-1]), generator=g).to(device)
            samples = samplers.ddim(den, x_T, time_grid(schedule, 50, "leading"))
            save_images(samples, out / "samples.png", nrow=8)
        print(f"wrote {out / 'model.pt'}; final loss (mean of the last 100 steps) "
              f"{sum(result.losses[-100:]) / max(1, len(result.losses[-100:])):.4f}", file=sys.stderr)
    _finish_distributed()
    return 0


def _load(args):
    if args.dataset == "digits":
        from .data import load_digits

        if args.data_root:
            raise SystemExit("--data-root is not used with --dataset digits (the digits ship with scikit-learn)")
        return load_digits(args.size or 8, "train")
    if args.size is not None:
        raise SystemExit("--size applies to --dataset digits only")
    if not args.data_root:
        raise SystemExit(f"--dataset {args.dataset} needs --data-root (the files are never downloaded)")
    from .data import load_image_dataset

    return load_image_dataset(args.dataset, args.data_root, "train")


def _init_distributed(device_arg):
    """Under torchrun (``WORLD_SIZE`` set): join the process group (NCCL on CUDA, gloo on CPU),
    one GPU per process (``LOCAL_RANK``). Returns ``(rank, world_size, device)``."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device_arg is None:
            device_arg = "cuda" if torch.cuda.is_available() else "cpu"
        device = _device(device_arg)
        if device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return torch.distributed.get_rank(), torch.distributed.get_world_size(), device
    return 0, 1, _device(device_arg)


def _device(arg: str | None) -> torch.device:
    """``--device``: default CUDA when present, else CPU; a clear message when CUDA is asked for
    and missing."""
    try:
        device = torch.device(arg or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:
        raise SystemExit(f"--device: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {arg}: this PyTorch sees no CUDA device (use --device cpu)")
    return device


def _finish_distributed(sync: bool = True):
    """Leave the process group. ``sync``: wait for every rank first (rank 0 may still be writing
    files), so that no rank tears down its gloo threads while a peer still talks to it; an
    interrupted run skips the wait, since a peer may be gone."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gc.collect()  # drop DDP reducers before their process group
        if sync:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


# -- sample --------------------------------------------------------------------------------
def _sample(args) -> int:
    try:
        net, meta = load_model(args.checkpoint, return_meta=True)
    except ValueError:
        net, meta = None, {}
    if not isinstance(net, UNet) or "schedule" not in meta:
        raise SystemExit(f"{args.checkpoint} is not a model.pt written by `python -m diffusion_edu train`")
    device = _device(args.device)
    net.to(device)
    schedule = DDPMSchedule(alphas_cumprod(ddpm_betas(meta["timesteps"], meta["schedule"])))
    den = Denoiser(net, schedule, meta.get("prediction", "eps"))
    if net.num_classes is not None:
        cycle = args.labels or tuple(range(net.num_classes))
        if any(not 0 <= c <= net.num_classes for c in cycle):
            raise SystemExit(f"--labels must lie in 0..{net.num_classes} ({net.num_classes} = null class)")
        labels = torch.tensor([cycle[i % len(cycle)] for i in range(args.num_samples)], device=device)
        null = torch.full_like(labels, net.null_label)
        den = cfg(den.bind(y=labels), den.bind(y=null), args.guidance)  # classifier-free guidance
    elif args.labels or args.guidance != 1.0:
        raise SystemExit("--labels and --guidance need a class-conditional model")
    if not args.no_clip:
        den = clip_x0(den)
    steps = args.steps or (meta["timesteps"] if args.sampler == "ddpm" else 50)
    try:
        ts = time_grid(schedule, steps, args.spacing)
    except ValueError as e:
        raise SystemExit(f"--steps/--spacing: {e}") from None
    sampler, stochastic = SAMPLERS[args.sampler]
    kw = {"generator": torch.Generator().manual_seed(args.seed + 1)} if stochastic else {}
    kw.update({"ddim": {"eta": args.eta}, "dpm_solver": {"order": args.order}, "heun": {"s_churn": args.churn},
               "probability_flow": {"method": args.method}}.get(args.sampler, {}))
    g = torch.Generator().manual_seed(args.seed)
    x_T = torch.randn((args.num_samples, net.in_channels, meta["image_size"], meta["image_size"]), generator=g)
    try:
        x = sampler(den, x_T.to(device), ts, **kw)
    except ValueError as e:
        raise SystemExit(f"--sampler {args.sampler}: {e}") from None
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_images(x, args.out, nrow=args.nrow)
    if args.save_tensor:
        torch.save(x.cpu(), args.save_tensor)
    print(f"wrote {args.num_samples} samples ({args.sampler}, {steps} steps, {args.spacing} spacing, "
          f"{den.nfe} model calls) to {args.out}", file=sys.stderr)
    return 0


# -- bench ---------------------------------------------------------------------------------
def _bench(args) -> int:
    from .bench import bench, format_table

    device = _device(args.device)
    cuda = device.type == "cuda"
    kw = {k: getattr(args, k) for k in ("batch_size", "steps", "warmup") if getattr(args, k) is not None}
    bf16 = cuda if args.bf16 is None else args.bf16
    runs = []
    for r in range(args.repeats):
        rows = bench(args.config, device=device, amp_dtype=torch.bfloat16 if bf16 else None,
                     channels_last=cuda if args.channels_last is None else args.channels_last,
                     compile=args.compile, generator=torch.Generator().manual_seed(r), **kw)
        print(format_table(rows), flush=True)
        runs.append(rows)
    if args.repeats > 1:
        ratios = [ours["images_per_s"] / peer["images_per_s"] for ours, peer in runs]
        line = f"median over {args.repeats} runs, ours / peer: throughput {statistics.median(ratios):.2f}x"
        line += f" (runs: {', '.join(f'{v:.2f}' for v in ratios)})"
        if runs[0][0].get("cpu_ms_per_step") is not None:
            cpu = [ours["cpu_ms_per_step"] / peer["cpu_ms_per_step"] for ours, peer in runs]
            line += f"; CPU time per step {statistics.median(cpu):.2f}x (runs: {', '.join(f'{v:.2f}' for v in cpu)})"
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2, default=str))
    return 0


# -- train-latent and generate -------------------------------------------------------------------
def _train_latent(args) -> int:
    from .data import load_digits
    from .pipelines import train_latent
    from .text import caption_digits

    out = Path(args.out)
    x, y = load_digits(32, "train")  # 32 x 32 digits: 8 x 8 latents at factor 4
    g = torch.Generator().manual_seed(args.seed)
    # every image twice, once captioned in English and once in Chinese (words kept at random)
    images = torch.cat([x, x])
    captions = caption_digits(x, y, "en", g) + caption_digits(x, y, "zh", g)
    if args.steps < 1:
        raise SystemExit(f"--steps must be >= 1, got {args.steps}")
    ae_steps = args.autoencoder_steps if args.autoencoder_steps is not None else max(1, args.steps // 2)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({k: v for k, v in vars(args).items() if k != "command"}, indent=2))
    device = _device(args.device)
    print(f"{len(images)} captioned images (e.g. {captions[0]!r}, {captions[len(x)]!r}); device {device}",
          file=sys.stderr)
    try:
        train_latent(images, captions, out, steps=args.steps, autoencoder_steps=ae_steps, net=args.net,
                     base_channels=args.base_channels, autoencoder_channels=args.autoencoder_channels,
                     text_dim=args.text_dim, timesteps=args.timesteps, schedule=args.schedule,
                     prediction=args.prediction, batch_size=args.batch_size, lr=args.lr,
                     prompt_dropout=args.prompt_dropout, ema_decay=args.ema_decay, seed=args.seed, device=device,
                     checkpoint_every=args.checkpoint_every, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted: run the same command again to continue ({out})", file=sys.stderr)
        return 130
    print(f"wrote the pipeline to {out}", file=sys.stderr)
    return 0


def _generate(args) -> int:
    from .pipelines import StableDiffusion

    try:
        pipe = StableDiffusion.from_pretrained(args.pipeline)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"--pipeline: {e}") from None
    pipe.to(_device(args.device))
    try:
        images = pipe(args.prompt, steps=args.steps, guidance=args.guidance, sampler=args.sampler,
                      negative_prompt=args.negative_prompt, num_images_per_prompt=args.num_samples,
                      generator=torch.Generator().manual_seed(args.seed))
    except ValueError as e:
        raise SystemExit(str(e)) from None
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_images(images, args.out, nrow=args.nrow)
    print(f"wrote {len(images)} images ({len(args.prompt)} prompt(s), guidance {args.guidance}, "
          f"{args.sampler}, {args.steps} steps) to {args.out}", file=sys.stderr)
    return 0
