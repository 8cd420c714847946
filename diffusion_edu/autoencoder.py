r"""The KL-regularised convolutional autoencoder of latent diffusion (Rombach et al., 2022).

Latent diffusion runs the diffusion model not on pixels ``x`` of shape ``(B, C, H, W)`` but on
latents ``z`` of shape ``(B, c, H/f, W/f)`` made by an autoencoder trained first and then frozen.
With ``f = 4`` and ``c = 4`` a 32x32 grey image (1,024 numbers) becomes an 8x8x4 latent (256
numbers), and every step of the diffusion model is cheaper by about the same factor.

The encoder ``E`` outputs a diagonal Gaussian ``q(z | x) = N(mean(x), diag exp(logvar(x)))``, the
decoder ``D`` maps a latent back to an image, and the training loss per batch is

.. math::  L = \underbrace{\tfrac{1}{N_x} \lVert D(z) - x \rVert^2}_{\text{reconstruction}}
           + w_{KL} \, \underbrace{\tfrac{1}{N_z} \sum_j \tfrac12 \big(\mu_j^2 + e^{\text{logvar}_j}
           - 1 - \text{logvar}_j\big)}_{KL(q(z|x) \,\|\, N(0, I))},
           \qquad z = \mu + e^{\text{logvar}/2} \varepsilon,\; \varepsilon \sim N(0, I),

with ``N_x`` the number of pixel values and ``N_z`` the number of latent entries in the batch
(both terms are means), and a *small* ``w_KL`` (``1e-4``): see :meth:`Autoencoder.loss`.

The latent's scale: a diffusion model's prior is ``N(0, I)`` and its schedules assume data of
roughly unit variance, but nothing makes the encoder's latents have it. Rombach et al. therefore
multiply the latents by ``scale = 1 / std(z)``, measured once on the training data; the constant
``0.18215`` of Stable Diffusion v1 is exactly this number for its autoencoder
(``vae.config.scaling_factor`` in diffusers). :meth:`Autoencoder.fit_scale` measures it and keeps it
in a buffer, so it is saved with the weights; the diffusion model sees
``encode_scaled(x) = scale * mean(x)`` and its samples go back through ``decode(z / scale)``.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch
from torch import nn

from .nets.unet import Downsample, ResBlock, SelfAttention, Upsample, group_norm
from .utils import check_finite

__all__ = ["Autoencoder", "AutoencoderLoss", "FACTORS"]

FACTORS = (2, 4, 8)  # downsampling factors f: the chapter uses 4, Stable Diffusion 8


class AutoencoderLoss(NamedTuple):
    """The terms of :meth:`Autoencoder.loss`, each a 0-d tensor: ``total = reconstruction + kl_weight * kl``."""

    total: torch.Tensor
    reconstruction: torch.Tensor  # mean squared error per pixel value
    kl: torch.Tensor  # KL(q(z | x) || N(0, I)) per latent entry


class Autoencoder(nn.Module):
    r"""Convolutional autoencoder with a diagonal-Gaussian latent (the "VAE" of latent diffusion,
    diffusers' ``AutoencoderKL``), written at teaching size.

    Images ``x`` are ``(B, in_channels, H, W)`` with ``H`` and ``W`` divisible by ``factor``;
    latents are ``(B, latent_channels, H / factor, W / factor)``.

    The architecture follows Rombach et al. (2022), with the blocks of :mod:`diffusion_edu.nets.unet`
    (without time embedding and without skip connections: the latent is the only path):

    - encoder: ``conv3x3 -> [ResBlock x num_res_blocks, Downsample] x log2(f) -> ResBlock x num_res_blocks
      -> ResBlock, SelfAttention, ResBlock -> GroupNorm, SiLU, conv3x3 -> (mean, logvar)``, with
      ``base_channels`` at full resolution and ``2 * base_channels`` below it;
    - decoder: the mirror image, ``num_res_blocks + 1`` blocks per resolution and
      :class:`~diffusion_edu.nets.unet.Upsample` instead of downsampling, ending in a linear
      ``conv3x3`` (no ``tanh``: the loss, not the output layer, keeps images in ``[-1, 1]``).

    Parameters
    ----------
    in_channels : channels of the images (1 for digits, 3 for colour)
    latent_channels : channels ``c`` of the latent
    factor : the downsampling factor ``f``, one of :data:`FACTORS`
    base_channels : width at full resolution
    num_res_blocks : residual blocks per resolution in the encoder (the decoder has one more)

    ``config`` holds the constructor arguments, so :func:`diffusion_edu.training.save_model` can
    store the model; the buffer ``scale`` (set by :meth:`fit_scale`, 1 until then) is part of the
    ``state_dict`` and is saved with the weights.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> ae = Autoencoder(in_channels=1, latent_channels=4, factor=4, base_channels=8)
    >>> x = torch.rand(2, 1, 32, 32) * 2 - 1
    >>> mean, logvar = ae.encode(x); mean.shape
    torch.Size([2, 4, 8, 8])
    >>> ae.decode(mean).shape
    torch.Size([2, 1, 32, 32])
    >>> out = ae.loss(x, kl_weight=1e-4, generator=torch.Generator().manual_seed(0))
    >>> bool(torch.isclose(out.total, out.reconstruction + 1e-4 * out.kl))
    True
    """

    def __init__(self, in_channels: int = 1, latent_channels: int = 4, factor: int = 4,
                 base_channels: int = 32, num_res_blocks: int = 1):
        super().__init__()
        for name, value, low in (("in_channels", in_channels, 1), ("latent_channels", latent_channels, 1),
                                 ("base_channels", base_channels, 1), ("num_res_blocks", num_res_blocks, 0)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if isinstance(factor, bool) or factor not in FACTORS:
            raise ValueError(f"factor must be one of {FACTORS}, got {factor!r}")
        self.config = dict(in_channels=int(in_channels), latent_channels=int(latent_channels), factor=int(factor),
                           base_channels=int(base_channels), num_res_blocks=int(num_res_blocks))
        self.in_channels, self.latent_channels, self.factor = int(in_channels), int(latent_channels), int(factor)
        levels = int(math.log2(factor))  # number of halvings
        chs = [base_channels] + [2 * base_channels] * levels  # width at each resolution, full first

        # -- encoder: x (B, C, H, W) -> (mean, logvar), each (B, c, H/f, W/f)
        self.enc_in = nn.Conv2d(in_channels, chs[0], 3, padding=1)
        self.enc_down = nn.ModuleList()
        ch = chs[0]
        for i, out_ch in enumerate(chs):
            for _ in range(num_res_blocks):
                self.enc_down.append(ResBlock(ch, out_ch, None))
                ch = out_ch
            if i < levels:
                self.enc_down.append(Downsample(ch))
        self.enc_mid = _mid_block(ch)
        self.enc_out = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, 2 * latent_channels, 3, padding=1))

        # -- decoder: z (B, c, H/f, W/f) -> (B, C, H, W)
        self.dec_in = nn.Conv2d(latent_channels, ch, 3, padding=1)
        self.dec_mid = _mid_block(ch)
        self.dec_up = nn.ModuleList()
        for i in reversed(range(len(chs))):
            for _ in range(num_res_blocks + 1):
                self.dec_up.append(ResBlock(ch, chs[i], None))
                ch = chs[i]
            if i > 0:
                self.dec_up.append(Upsample(ch))
        self.dec_out = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1))

        self.register_buffer("scale", torch.tensor(1.0))  # 1 / std of the latent means, see fit_scale

    # -- the two networks ------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``q(z | x)``: ``(mean, logvar)``, each ``(B, latent_channels, H / factor, W / factor)``.

        ``logvar`` is clamped to ``[-30, 20]`` as in Rombach et al.'s code, so ``exp(logvar)``
        stays finite early in training."""
        self._check_image(x)
        h = self.enc_in(x)  # (B, base, H, W)
        for block in self.enc_down:
            h = block(h)  # (B, ch, H / 2^k, W / 2^k)
        h = self.enc_out(self.enc_mid(h))  # (B, 2 c, H/f, W/f)
        mean, logvar = h.chunk(2, dim=1)  # 2 x (B, c, H/f, W/f)
        return mean, logvar.clamp(-30.0, 20.0)

    def sample_latent(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A draw of ``q(z | x)`` by reparameterisation, ``z = mean + exp(logvar / 2) eps``,
        ``eps ~ N(0, I)`` (differentiable in the encoder's weights): ``(B, c, H/f, W/f)``."""
        mean, logvar = self.encode(x)
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        return mean + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The reconstruction ``D(z)``, ``(B, in_channels, h * factor, w * factor)`` for ``z`` of
        shape ``(B, latent_channels, h, w)``."""
        if not torch.is_tensor(z) or z.ndim != 4 or z.shape[1] != self.latent_channels:
            got = tuple(z.shape) if torch.is_tensor(z) else type(z).__name__
            raise ValueError(f"z must have shape (B, {self.latent_channels}, h, w), got {got}")
        check_finite(z, "z")
        h = self.dec_mid(self.dec_in(z))  # (B, ch, h, w)
        for block in self.dec_up:
            h = block(h)  # (B, ch, h 2^k, w 2^k)
        return self.dec_out(h)  # (B, C, H, W)

    # -- training --------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, kl_weight: float = 1e-4,
             generator: torch.Generator | None = None) -> AutoencoderLoss:
        r"""The training loss of one batch: ``AutoencoderLoss(total, reconstruction, kl)``.

        - ``reconstruction = mean((D(z) - x)^2)``, the squared error *per pixel value*, with
          ``z ~ q(z | x)`` one reparameterised draw (a decoder trained on noisy latents must map
          nearby latents to similar images);
        - ``kl = mean_j (mean_j^2 + exp(logvar_j) - 1 - logvar_j) / 2``, the closed-form
          ``KL(N(mean, exp(logvar)) || N(0, I))`` *per latent entry*;
        - ``total = reconstruction + kl_weight * kl``.

        Why a small KL weight. With ``kl_weight`` of order one this is a VAE's negative ELBO (up to
        constants), which would pull every latent towards ``N(0, I)``, lose information and blur the
        reconstructions. Latent diffusion does not need that: the diffusion model, not the
        autoencoder's prior, models the distribution of the latents. It needs a latent that
        reconstructs the image almost exactly, is *bounded* (the KL stops the means from drifting to
        huge values and the variances from collapsing to zero without limit) and *smooth* (a latent
        with a little noise decodes to nearly the same image, so the small errors of a diffusion
        sampler do not become artefacts). A small weight gives a nearly deterministic latent with
        these properties; Rombach et al. weigh a summed KL by ``1e-6`` against a summed
        reconstruction term, a still smaller weight per entry than ours.

        What we leave out. The original reconstruction term is an L1 error plus a perceptual
        (LPIPS) distance on the features of a pretrained VGG, plus an adversarial (patch-GAN) loss
        switched on late in training: squared error alone gives blurry textures on photographs,
        which LPIPS and the discriminator sharpen. Both need extra networks (LPIPS a download), and
        on 32x32 digits -- flat strokes on a flat background -- mean squared error already gives
        reconstructions close to the originals, so we use it alone.

        Parameters
        ----------
        x : images ``(B, in_channels, H, W)``, ``H`` and ``W`` divisible by ``factor``
        kl_weight : ``w_KL >= 0``
        generator : for the reparameterised draw
        """
        if isinstance(kl_weight, bool) or not isinstance(kl_weight, numbers.Real) or not 0 <= kl_weight < math.inf:
            raise ValueError(f"kl_weight must be a finite number >= 0, got {kl_weight!r}")
        mean, logvar = self.encode(x)  # 2 x (B, c, H/f, W/f)
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        z = mean + torch.exp(0.5 * logvar) * eps  # reparameterised z ~ q(z | x)
        reconstruction = (self.decode(z) - x).pow(2).mean()  # per pixel value
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()  # per latent entry
        return AutoencoderLoss(reconstruction + kl_weight * kl, reconstruction, kl)

    # -- the latent scale factor -----------------------------------------------------------
    @torch.no_grad()
    def fit_scale(self, images: torch.Tensor, batch_size: int = 256) -> float:
        """Set the buffer ``scale`` to ``1 / std`` of the latent means over ``images`` and return it.

        ``std`` is the standard deviation of all entries of ``mean(x)`` over the data set together
        (one number, as Stable Diffusion's ``0.18215``; Rombach et al. measured it on posterior
        draws, which a small KL weight makes nearly the same). The mean is *not* subtracted from
        the latents: a well-trained autoencoder's latents are close to centred, and Stable Diffusion v1
        does not shift them either (later models add a ``shift_factor``).

        Parameters
        ----------
        images : ``(N, in_channels, H, W)``, e.g. the training set; moved to the model's device in
            batches of ``batch_size``

        Returns
        -------
        The new ``scale`` (a float); ``encode_scaled(images)`` then has standard deviation 1.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self._check_image(images, "images")
        device = self.scale.device
        means = [self.encode(images[i:i + batch_size].to(device))[0] for i in range(0, len(images), batch_size)]
        std = torch.cat(means).double().std()  # over every entry of every latent
        if not 0 < std < math.inf:
            raise ValueError(f"images give latent means of standard deviation {float(std)!r}: need a positive, "
                             f"finite spread to fit the scale (more than one image, not all equal?)")
        self.scale.fill_(1.0 / std)
        return float(self.scale)

    def encode_scaled(self, x: torch.Tensor) -> torch.Tensor:
        """``scale * mean(x)``, ``(B, c, H/f, W/f)``: the latents a diffusion model is trained on."""
        return self.scale * self.encode(x)[0]

    def decode_scaled(self, z: torch.Tensor) -> torch.Tensor:
        """``decode(z / scale)``, ``(B, C, H, W)``: images from latents a diffusion model produced."""
        if not torch.is_tensor(z):
            raise ValueError(f"z must be a torch.Tensor of shape (B, {self.latent_channels}, h, w), "
                             f"got {type(z).__name__}")
        return self.decode(z / self.scale)

    # -- helpers ---------------------------------------------------------------------------
    def _check_image(self, x, name: str = "x") -> None:
        f, C = self.factor, self.in_channels
        if (not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] != C
                or x.shape[2] % f or x.shape[3] % f or x.shape[2] == 0 or x.shape[3] == 0):
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"{name} must have shape (B, {C}, H, W) with H and W positive multiples of "
                             f"factor={f}, got {got}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        check_finite(x, name)


def _mid_block(channels: int) -> nn.Sequential:
    """``ResBlock, SelfAttention, ResBlock`` at the lowest resolution: one attention head, as
    the ``AttnBlock`` of Rombach et al. (cheap here: at most ``(H/f) (W/f)`` positions)."""
    return nn.Sequential(ResBlock(channels, channels, None), SelfAttention(channels, head_channels=channels),
                         ResBlock(channels, channels, None))
