r"""A small Stable Diffusion: text to image through a latent diffusion model (Rombach et al., 2022).

The pipeline holds four parts, each a plain object of this library:

- an :class:`~diffusion_edu.autoencoder.Autoencoder` (images ``(B, C, H, W)`` in ``[-1, 1]`` to
  latents ``(B, c, H / f, W / f)`` and back; its ``scale`` makes the latents' standard deviation 1);
- a text encoder (:class:`~diffusion_edu.text.TextEncoder`): prompts to token vectors
  ``context (B, tokens, d)`` and a mask ``(B, tokens)`` (True = a real token);
- a denoising network on the latents, called ``net(x, t, context=..., context_mask=...)`` (the
  :class:`~diffusion_edu.nets.unet.UNet` with ``context_dim`` or the
  :class:`~diffusion_edu.nets.dit.DiT`), predicting ``prediction`` on ``schedule``;
- a :class:`~diffusion_edu.schedules.Schedule`.

Sampling is classifier-free guidance (Ho & Salimans, 2022) with the empty prompt (or a negative
prompt) as the unconditional model,

.. math::  \hat\varepsilon = \hat\varepsilon(x_t, t, \varnothing) + w\,\big(\hat\varepsilon(x_t, t, c) - \hat\varepsilon(x_t, t, \varnothing)\big),

run by any sampler of :mod:`diffusion_edu.samplers` on a :func:`~diffusion_edu.schedules.time_grid`,
then decoded. ``save_pretrained(dir)`` / ``StableDiffusion.from_pretrained(dir)`` store each part
with :func:`~diffusion_edu.training.save_model` (atomic writes, loaded with ``weights_only=True``:
never a pickle that runs code), so the same generator gives the same images after a round trip.

diffusers' names for the same parts: ``AutoencoderKL``, ``UNet2DConditionModel`` /
``DiTTransformer2DModel``, ``CLIPTextModel`` and ``StableDiffusionPipeline``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

from . import samplers as _samplers
from .denoiser import Denoiser
from .flow_matching import StraightPath
from .guidance import cfg
from .parameterization import check_prediction
from .schedules import DDPMSchedule, Schedule, check_alphas_cumprod, time_grid
from .sde import VESDE, VPSDE, SubVPSDE
from .training import _atomic_save, _load, load_model, save_model

__all__ = ["StableDiffusion", "SAMPLERS", "TextConditioned", "text_conditioned_loss", "train_latent"]

#: sampler name -> function of the one sampler signature ``(denoiser, x, ts, *, generator)``
SAMPLERS = {
    "dpm_solver": lambda den, x, ts, g: _samplers.dpm_solver(den, x, ts, order=2),
    "ddim": lambda den, x, ts, g: _samplers.ddim(den, x, ts, eta=0.0, generator=g),
    "heun": lambda den, x, ts, g: _samplers.heun(den, x, ts, generator=g),
    "euler": lambda den, x, ts, g: _samplers.probability_flow(den, x, ts, method="euler"),
    "ancestral": lambda den, x, ts, g: _samplers.ddim(den, x, ts, eta=1.0, generator=g),
}

_PARTS = ("autoencoder.pt", "text_encoder.pt", "net.pt", "pipeline.pt")


class StableDiffusion:
    """Text-to-image latent diffusion; see the module docstring.

    Parameters
    ----------
    autoencoder : an ``Autoencoder`` whose ``scale`` has been fitted (``fit_scale``)
    net : the latent denoiser, ``net(x, t, context=, context_mask=)``
    text_encoder : ``encode(prompts) -> (context, mask)``
    schedule : the schedule ``net`` was trained on
    prediction : what ``net`` predicts (``"eps"``, ``"x0"``, ``"v"``, ``"score"``, ``"velocity"``)
    image_size : height = width of the images (a multiple of the autoencoder's factor)
    """

    def __init__(self, autoencoder: nn.Module, net: nn.Module, text_encoder: nn.Module, schedule: Schedule, *,
                 prediction: str = "eps", image_size: int = 32):
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule must be a Schedule, got {type(schedule).__name__}")
        check_prediction(prediction)
        for name, part, needs in (("autoencoder", autoencoder, ("encode_scaled", "decode_scaled")),
                                  ("text_encoder", text_encoder, ("encode",)), ("net", net, ("forward",))):
            if not isinstance(part, nn.Module) or not all(hasattr(part, m) for m in needs):
                raise ValueError(f"{name} must be an nn.Module with {', '.join(needs)}, got {type(part).__name__}")
        factor = int(autoencoder.config["factor"])
        if not isinstance(image_size, int) or image_size < factor or image_size % factor:
            raise ValueError(f"image_size must be a positive multiple of the autoencoder's factor {factor}, "
                             f"got {image_size!r}")
        self.autoencoder, self.net, self.text_encoder = autoencoder, net, text_encoder
        self.schedule, self.prediction, self.image_size = schedule, prediction, image_size

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(c, H / f, W / f)``: the shape of one latent."""
        f = int(self.autoencoder.config["factor"])
        return int(self.autoencoder.config["latent_channels"]), self.image_size // f, self.image_size // f

    def denoiser(self, prompts, negative_prompt=None, guidance: float = 4.0) -> Denoiser:
        """The guided latent Denoiser for a list of prompts (one latent per prompt)."""
        prompts = _as_prompts(prompts, "prompt")
        context, mask = self.text_encoder.encode(prompts)
        if guidance == 1:
            return Denoiser(self.net, self.schedule, self.prediction, context=context, context_mask=mask)
        negatives = [""] * len(prompts) if negative_prompt is None else _as_prompts(negative_prompt, "negative_prompt")
        if len(negatives) == 1 and len(prompts) > 1:
            negatives = negatives * len(prompts)
        if len(negatives) != len(prompts):
            raise ValueError(f"negative_prompt must be one prompt or one per prompt ({len(prompts)}), "
                             f"got {len(negatives)}")
        n_context, n_mask = self.text_encoder.encode(negatives)
        # pad both prompt batches to the same number of tokens so CFG can batch them in one call
        context, mask, n_context, n_mask = _same_length(context, mask, n_context, n_mask)
        cond = Denoiser(self.net, self.schedule, self.prediction, context=context, context_mask=mask)
        uncond = Denoiser(self.net, self.schedule, self.prediction, context=n_context, context_mask=n_mask)
        return cfg(cond, uncond, guidance)

    @torch.no_grad()
    def __call__(self, prompt, *, steps: int = 20, guidance: float = 4.0, sampler: str = "dpm_solver",
                 negative_prompt=None, num_images_per_prompt: int = 1, spacing: str = "logsnr",
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Images ``(B, C, H, W)`` in ``[-1, 1]`` for ``prompt`` (a string or a list of strings),
        ``num_images_per_prompt`` each, in prompt order.

        ``guidance`` is the CFG weight ``w`` (1: the conditional model alone, 0: the unconditional);
        ``negative_prompt`` replaces the empty prompt as the unconditional model; ``sampler`` is one of
        :data:`SAMPLERS`; ``steps`` grid steps with ``spacing`` (:func:`~diffusion_edu.schedules.time_grid`).
        The initial noise is drawn from ``generator`` (on the CPU), so a seed fixes the images."""
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {sampler!r}")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        if not (isinstance(guidance, (int, float)) and math.isfinite(guidance) and guidance >= 0):
            raise ValueError(f"guidance must be a finite number >= 0, got {guidance!r}")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be an int >= 1, got {num_images_per_prompt!r}")
        prompts = [p for p in _as_prompts(prompt, "prompt") for _ in range(num_images_per_prompt)]
        negatives = negative_prompt
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            negatives = [p for p in _as_prompts(negative_prompt, "negative_prompt") for _ in range(num_images_per_prompt)]
        was_training = [m.training for m in (self.autoencoder, self.net, self.text_encoder)]
        for m in (self.autoencoder, self.net, self.text_encoder):
            m.eval()
        try:
            device = next(self.net.parameters()).device
            den = self.denoiser(prompts, negatives, guidance)
            x = self.schedule.prior_sample((len(prompts), *self.latent_shape), generator).to(device)
            z = SAMPLERS[sampler](den, x, time_grid(self.schedule, steps, spacing), generator)
            return self.autoencoder.decode_scaled(z.to(torch.float32)).clamp(-1, 1)
        finally:
            for m, mode in zip((self.autoencoder, self.net, self.text_encoder), was_training):
                m.train(mode)

    def to(self, device) -> StableDiffusion:
        for m in (self.autoencoder, self.net, self.text_encoder):
            m.to(device)
        return self

    # -- saving and loading -----------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the four parts into ``directory`` (created if needed): ``autoencoder.pt``,
        ``text_encoder.pt``, ``net.pt`` (each by :func:`~diffusion_edu.training.save_model`) and
        ``pipeline.pt`` (the schedule, the prediction type and the image size; tensors, numbers
        and strings only)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_model(self.autoencoder, d / "autoencoder.pt")
        save_model(self.text_encoder, d / "text_encoder.pt")
        save_model(self.net, d / "net.pt")
        _atomic_save({"format": "diffusion_edu.StableDiffusion/1", "prediction": self.prediction,
                      "image_size": self.image_size, "schedule": _schedule_state(self.schedule)}, d / "pipeline.pt")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> StableDiffusion:
        """Load a pipeline written by :meth:`save_pretrained`. Every file is checked to exist first
        and each is validated as it loads, so a bad directory raises before anything is returned:
        a missing file gives ``FileNotFoundError`` naming it, a file that is not a model (or a
        ``pipeline.pt`` from something else) a ``ValueError`` naming it."""
        d = Path(directory)
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: no such pipeline directory")
        missing = [name for name in _PARTS if not (d / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{d} is not a complete pipeline: missing {', '.join(missing)}")
        meta = _load(d / "pipeline.pt", map_location, "a pipeline.pt written by StableDiffusion.save_pretrained")
        if not isinstance(meta, dict) or meta.get("format") != "diffusion_edu.StableDiffusion/1":
            raise ValueError(f"{d / 'pipeline.pt'} is not a pipeline.pt written by StableDiffusion.save_pretrained")
        schedule = _schedule_from_state(meta.get("schedule"), d / "pipeline.pt")
        parts = {name: load_model(d / f"{name}.pt", map_location) for name in ("autoencoder", "text_encoder", "net")}
        return cls(parts["autoencoder"], parts["net"], parts["text_encoder"], schedule,
                   prediction=meta["prediction"], image_size=int(meta["image_size"]))


# -- training ---------------------------------------------------------------------------------
class TextConditioned(nn.Module):
    """The latent denoiser and the text encoder as one module, so that they train jointly (as
    Rombach et al., 2022, train their text transformer with the denoiser) under one optimiser and
    one EMA: ``model(x, t, ids, mask)`` encodes the token ids and calls the denoiser."""

    def __init__(self, net: nn.Module, text_encoder: nn.Module):
        super().__init__()
        self.net, self.text_encoder = net, text_encoder

    def forward(self, x: torch.Tensor, t, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(x, t, context=self.text_encoder(ids, mask), context_mask=mask)


def text_conditioned_loss(model: TextConditioned, z0: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                          schedule: Schedule, *, prediction: str = "eps", prompt_dropout: float = 0.1,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Denoising loss of a text-conditioned latent model,
    ``E || net(x_t, t, enc(prompt)) - target ||^2`` with ``x_t = alpha_t z0 + sigma_t eps`` and
    ``target`` the ``prediction``'s own (:func:`~diffusion_edu.losses.dsm_loss`); each prompt is
    replaced by the empty prompt (its mask set to all False) with probability ``prompt_dropout``,
    which trains the unconditional model of classifier-free guidance at the same time."""
    from .losses import dsm_loss

    if not 0 <= prompt_dropout < 1:
        raise ValueError(f"prompt_dropout must lie in [0, 1), got {prompt_dropout!r}")
    if ids.shape != mask.shape or ids.shape[0] != z0.shape[0]:
        raise ValueError(f"ids and mask must both be ({z0.shape[0]}, tokens), got {tuple(ids.shape)} and "
                         f"{tuple(mask.shape)}")
    if prompt_dropout:
        keep = torch.rand(mask.shape[0], generator=generator) >= prompt_dropout  # (B,)
        mask = mask & keep.to(mask.device)[:, None]
    net = lambda x, t: model(x, t, ids, mask)  # noqa: E731
    return dsm_loss(net, z0, schedule, prediction=prediction, generator=generator)


def train_latent(
    images: torch.Tensor, captions: list[str], out: str | os.PathLike, *, steps: int, autoencoder_steps: int,
    net: str = "unet", base_channels: int = 64, latent_channels: int = 4, factor: int = 4,
    autoencoder_channels: int = 32, text_dim: int = 64, timesteps: int = 1000, schedule: str = "cosine",
    prediction: str = "eps", batch_size: int = 64, lr: float = 5e-4, kl_weight: float = 1e-4,
    prompt_dropout: float = 0.1, ema_decay: float = 0.999, seed: int = 0, device=None,
    checkpoint_every: int = 500, progress: bool = True,
) -> StableDiffusion:
    """The whole recipe of latent diffusion, resumable: train the autoencoder on ``images``
    (``autoencoder_steps``), fit its latent scale, encode the images once, then train the denoiser
    (``net``: ``"unet"`` or ``"dit"``) jointly with a text encoder on the scaled latents and the
    ``captions`` (``steps``), and write the pipeline to ``out`` (:meth:`StableDiffusion.save_pretrained`).

    Each stage keeps its own training state in ``out`` (``autoencoder_state.pt``,
    ``denoiser_state.pt``), written every ``checkpoint_every`` steps and on Ctrl-C; calling again with
    the same arguments continues where it stopped (a finished stage is not repeated)."""
    from .autoencoder import Autoencoder
    from .nets.dit import DiT
    from .nets.unet import UNet
    from .schedules import alphas_cumprod, ddpm_betas
    from .text import TextEncoder, Tokenizer
    from .training import train

    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must be a (N, C, S, S) tensor, got {getattr(images, 'shape', type(images))}")
    if len(captions) != len(images) or not all(isinstance(c, str) for c in captions):
        raise ValueError(f"captions must be {len(images)} strings, one per image, got {len(captions)}")
    if net not in ("unet", "dit"):
        raise ValueError(f"net must be 'unet' or 'dit', got {net!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = images.shape[-1]
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)

    # 1. the autoencoder
    ae = Autoencoder(images.shape[1], latent_channels, factor, autoencoder_channels, num_res_blocks=1)
    ae_result = train(ae, lambda m, x, gen: m.loss(x, kl_weight, gen).total, images, autoencoder_steps,
                      batch_size=batch_size, lr=lr, ema_decay=ema_decay, generator=g, device=device,
                      checkpoint=out / "autoencoder_state.pt", checkpoint_every=checkpoint_every, progress=progress)
    ae = ae_result.ema_model.eval()
    ae.fit_scale(images)
    with torch.no_grad():
        dev = next(ae.parameters()).device
        latents = torch.cat([ae.encode_scaled(images[i:i + 256].to(dev)).cpu() for i in range(0, len(images), 256)])

    # 2. the text encoder and the denoiser, jointly
    vocab = Tokenizer.from_texts(captions).vocab
    text = TextEncoder(vocab, dim=text_dim, depth=2, heads=4, max_length=16)
    ids, mask = text.tokenizer(captions, max_length=16)
    c, s = latent_channels, size // factor
    if net == "unet":
        denoiser = UNet(c, c, base_channels, (1, 2), 1, attention_resolutions=(1, 2), context_dim=text_dim)
    else:
        denoiser = DiT(c, c, input_size=s, patch_size=2, dim=2 * base_channels, depth=4, heads=4,
                       context_dim=text_dim)
    sched = DDPMSchedule(alphas_cumprod(ddpm_betas(timesteps, schedule)))
    model = TextConditioned(denoiser, text)
    result = train(model, lambda m, batch, gen: text_conditioned_loss(m, *batch, sched, prediction=prediction,
                                                                       prompt_dropout=prompt_dropout, generator=gen),
                   (latents, ids, mask), steps, batch_size=batch_size, lr=lr, ema_decay=ema_decay, generator=g,
                   device=device, checkpoint=out / "denoiser_state.pt", checkpoint_every=checkpoint_every,
                   progress=progress)
    ema = result.ema_model.eval()
    pipe = StableDiffusion(ae, ema.net, ema.text_encoder, sched, prediction=prediction, image_size=size)
    pipe.save_pretrained(out)
    (out / "losses.txt").write_text("".join(f"{v:.6g}\n" for v in result.losses))
    return pipe


# -- helpers ----------------------------------------------------------------------------------
def _as_prompts(prompt, name: str) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{name} must be a string or a non-empty list of strings, got {prompt!r:.80}")
    return list(prompts)


def _same_length(c1, m1, c2, m2):
    """Pad two (context, mask) pairs with masked zero tokens to the same number of tokens."""
    L = max(c1.shape[1], c2.shape[1])

    def pad(c, m):
        extra = L - c.shape[1]
        if extra == 0:
            return c, m
        return (torch.cat([c, c.new_zeros(c.shape[0], extra, c.shape[2])], 1),
                torch.cat([m, m.new_zeros(m.shape[0], extra)], 1))

    return (*pad(c1, m1), *pad(c2, m2))


def _schedule_state(schedule: Schedule) -> dict:
    if isinstance(schedule, DDPMSchedule):
        return {"kind": "DDPMSchedule", "alphas_cumprod": schedule.alphas_cumprod.detach().cpu().double()}
    if isinstance(schedule, (VPSDE, SubVPSDE)):
        return {"kind": type(schedule).__name__, "beta_min": schedule.beta_min, "beta_max": schedule.beta_max,
                "T": schedule.T}
    if isinstance(schedule, VESDE):
        return {"kind": "VESDE", "sigma_min": schedule.sigma_min, "sigma_max": schedule.sigma_max, "T": schedule.T}
    if isinstance(schedule, StraightPath):
        return {"kind": "StraightPath"}
    raise ValueError(f"schedule {type(schedule).__name__} cannot be saved: use DDPMSchedule, VPSDE, SubVPSDE, "
                     f"VESDE or StraightPath")


def _schedule_from_state(state, path) -> Schedule:
    kinds = {"VPSDE": VPSDE, "SubVPSDE": SubVPSDE, "VESDE": VESDE}
    try:
        kind = state["kind"]
        if kind == "DDPMSchedule":
            return DDPMSchedule(check_alphas_cumprod(state["alphas_cumprod"]))
        if kind == "StraightPath":
            return StraightPath()
        return kinds[kind](**{k: v for k, v in state.items() if k != "kind"})
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: its schedule {state!r:.80} cannot be rebuilt ({e})") from e
