r"""The variational autoencoder (Kingma & Welling, 2014; Rezende et al., 2014) and its ELBO.

A latent-variable model ``p(z) = N(0, I)``, ``p_theta(x | z)`` (the decoder) is fitted with an
approximate posterior ``q_phi(z | x) = N(mu(x), diag exp(logvar(x)))`` (the encoder) by
maximising the evidence lower bound

.. math::  \log p_\theta(x) \;\ge\; \text{ELBO}(x) =
           E_{q_\phi(z|x)}\big[\log p_\theta(x \mid z)\big] - KL\big(q_\phi(z|x) \,\|\, N(0, I)\big),

whose gap is ``KL(q_phi(z|x) || p_theta(z|x))``. The KL to the standard normal is closed form,

.. math::  KL = \tfrac12 \sum_j \big(\mu_j^2 + e^{\text{logvar}_j} - 1 - \text{logvar}_j\big),

and the expectation is estimated with the reparameterisation ``z = mu + exp(logvar / 2) eps``,
``eps ~ N(0, I)``, which makes the estimate differentiable in ``phi``. The importance-weighted
bound ``log (1/K) sum_k p(x, z_k) / q(z_k | x)`` (Burda et al., 2016) lies between the ELBO
(``K = 1``) and ``log p(x)`` (``K -> infinity``).

A diffusion model is the same inequality with a *fixed* encoder: chapter 5 and
:func:`diffusion_edu.likelihood.ddpm_elbo`.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .utils import check_finite

__all__ = ["VAE", "DECODERS"]

DECODERS = ("gaussian", "bernoulli")


class VAE(nn.Module):
    r"""A VAE with MLP encoder and decoder, for vectors ``(B, D)`` and small images ``(B, C, H, W)``
    (flattened to ``C H W`` pixels inside; an MLP is enough for 8x8 digits).

    Parameters
    ----------
    data_shape : ``D`` or the shape of one example, e.g. ``(1, 8, 8)``
    latent_dim : dimension of ``z``
    hidden, depth : width and number of hidden layers (SiLU) of encoder and decoder; ``depth=0``
        makes both linear maps (with a Gaussian decoder this is probabilistic PCA, whose
        ``log p(x)`` is closed form)
    decoder : the observation model ``p(x | z)``, chosen by the data:

        - ``"gaussian"``: ``N(x; f(z), s^2 I)`` for real-valued data (2-D points, images in
          ``[-1, 1]``); ``s = obs_std`` fixed, or one learned scalar when ``obs_std=None``
          (a per-pixel learned ``s`` can collapse to 0 on pixels that never change, such as
          the digits' borders, and send the ELBO to infinity). A log-density: nats that can be
          compared with other continuous models.
        - ``"bernoulli"``: ``prod_d Bern(x_d; sigmoid(f_d(z)))`` for binary data, the classic
          choice for ``[0, 1]`` images, used as a cross-entropy. For grey levels strictly between
          0 and 1 it is not a normalised density on ``[0, 1]^D`` (Loaiza-Ganem & Cunningham,
          2019): fine for training and pictures, not for likelihood numbers.
    obs_std : fixed standard deviation of the Gaussian decoder, or ``None`` to learn it

    ``config`` holds the constructor arguments (as :class:`diffusion_edu.nets.TimeMLP` does).

    Examples
    --------
    >>> vae = VAE(data_shape=(1, 8, 8), latent_dim=2, decoder="bernoulli")
    >>> x = torch.rand(5, 1, 8, 8)
    >>> mu, logvar = vae.encode(x); mu.shape, vae.decode(mu).shape
    (torch.Size([5, 2]), torch.Size([5, 1, 8, 8]))
    >>> vae.elbo(x, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([5])
    """

    def __init__(self, data_shape: int | Sequence[int] = 2, latent_dim: int = 2, hidden: int = 128,
                 depth: int = 2, decoder: str = "gaussian", obs_std: float | None = None):
        super().__init__()
        shape = (int(data_shape),) if isinstance(data_shape, int) else tuple(int(s) for s in data_shape)
        if not shape or min(shape) < 1:
            raise ValueError(f"data_shape must be a positive int or tuple of them, got {data_shape!r}")
        if latent_dim < 1 or hidden < 1 or depth < 0:
            raise ValueError(f"need latent_dim >= 1, hidden >= 1, depth >= 0; got "
                             f"latent_dim={latent_dim}, hidden={hidden}, depth={depth}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        if obs_std is not None and not obs_std > 0:
            raise ValueError(f"obs_std must be > 0 or None (learned), got {obs_std!r}")
        self.config = dict(data_shape=list(shape), latent_dim=latent_dim, hidden=hidden, depth=depth,
                           decoder=decoder, obs_std=obs_std)
        self.data_shape, self.latent_dim, self.decoder_kind = shape, latent_dim, decoder
        D = math.prod(shape)
        self.encoder = _mlp(D, hidden, depth, 2 * latent_dim)  # -> (mu, logvar)
        self.decoder = _mlp(latent_dim, hidden, depth, D)  # -> mean (gaussian) or logits (bernoulli)
        if decoder == "gaussian" and obs_std is None:
            self.log_obs_std = nn.Parameter(torch.zeros(()))  # learned log s, one scalar
        elif decoder == "gaussian":
            self.register_buffer("log_obs_std", torch.tensor(math.log(obs_std)))

    # -- the two networks ------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``q(z | x)``: ``(mu, logvar)``, each ``(B, latent_dim)``."""
        h = self.encoder(self._flat(x))  # (B, 2 L)
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """``z = mu + exp(logvar / 2) eps``, ``eps ~ N(0, I)``: a sample of ``q(z | x)`` that is a
        differentiable function of ``(mu, logvar)``."""
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The mean of ``p(x | z)``, ``(B, *data_shape)``: ``f(z)`` (Gaussian) or
        ``sigmoid(f(z))`` (Bernoulli)."""
        out = self.decoder(z)
        if self.decoder_kind == "bernoulli":
            out = torch.sigmoid(out)
        return out.reshape(z.shape[0], *self.data_shape)

    # -- densities and bounds --------------------------------------------------------------
    @property
    def obs_std(self) -> torch.Tensor:
        """``s`` of the Gaussian decoder (a 0-d tensor)."""
        if self.decoder_kind != "gaussian":
            raise ValueError("obs_std exists only for decoder='gaussian'")
        return self.log_obs_std.exp()

    def decoder_log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``log p(x | z)`` summed over dimensions, ``(B,)``; ``z`` may hold ``k`` samples per
        example stacked as ``(k * B, latent_dim)`` with ``x`` repeated to match."""
        xf, out = self._flat(x), self.decoder(z)  # (B, D) each
        if self.decoder_kind == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, xf, reduction="none").sum(1)
        return torch.distributions.Normal(out, self.log_obs_std.exp()).log_prob(xf).sum(1)

    @staticmethod
    def kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """``KL(N(mu, diag exp(logvar)) || N(0, I)) = (mu^2 + exp(logvar) - 1 - logvar).sum() / 2``,
        ``(B,)``."""
        return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)

    def elbo(self, x: torch.Tensor, generator: torch.Generator | None = None,
             n_samples: int = 1) -> torch.Tensor:
        """``E_q[log p(x | z)] - KL(q(z | x) || N(0, I))`` per example, ``(B,)`` nats; the
        expectation is estimated with ``n_samples`` reparameterised samples (differentiable).

        Examples
        --------
        >>> vae = VAE(data_shape=3, latent_dim=2, obs_std=1.0)
        >>> x = torch.randn(4, 3)
        >>> bool((vae.elbo(x, n_samples=2000) <= vae.iwae(x, k=2000) + 0.05).all())
        True
        """
        self._check(x, n_samples)
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu.repeat(n_samples, 1), logvar.repeat(n_samples, 1), generator)
        rec = self.decoder_log_prob(x.repeat(n_samples, *[1] * (x.ndim - 1)), z)  # (k B,)
        return rec.reshape(n_samples, -1).mean(0) - self.kl(mu, logvar)

    def iwae(self, x: torch.Tensor, k: int = 64, generator: torch.Generator | None = None) -> torch.Tensor:
        """The importance-weighted bound ``log (1/k) sum_i p(x | z_i) p(z_i) / q(z_i | x)``,
        ``z_i ~ q(z | x)`` (Burda et al., 2016), ``(B,)`` nats: ``ELBO <= E[IWAE_k] <= log p(x)``,
        increasing in ``k``."""
        self._check(x, k)
        mu, logvar = self.encode(x)
        mu_k, logvar_k = mu.repeat(k, 1), logvar.repeat(k, 1)  # (k B, L)
        z = self.reparameterize(mu_k, logvar_k, generator)
        log_px_z = self.decoder_log_prob(x.repeat(k, *[1] * (x.ndim - 1)), z)
        log_pz = _std_normal_log_prob(z)
        log_qz = _std_normal_log_prob((z - mu_k) * torch.exp(-0.5 * logvar_k)) - 0.5 * logvar_k.sum(1)
        log_w = (log_px_z + log_pz - log_qz).reshape(k, -1)  # (k, B)
        return torch.logsumexp(log_w, dim=0) - math.log(k)

    def sample(self, n: int, generator: torch.Generator | None = None, *, mean: bool = True) -> torch.Tensor:
        """``n`` draws ``z ~ N(0, I)`` decoded, ``(n, *data_shape)``: the decoder means
        (``mean=True``, the usual pictures) or samples of ``p(x | z)`` itself."""
        p = next(self.parameters())
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=p.dtype).to(p.device)
        m = self.decode(z)
        if mean:
            return m
        u = torch.rand(m.shape, generator=generator, dtype=m.dtype).to(m.device)
        if self.decoder_kind == "bernoulli":
            return (u < m).to(m.dtype)
        noise = torch.randn(m.shape, generator=generator, dtype=m.dtype).to(m.device)
        return m + self.obs_std * noise

    # -- helpers ---------------------------------------------------------------------------
    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(x) or tuple(x.shape[1:]) != self.data_shape:
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.data_shape))}), got {got}")
        return x.flatten(1)

    def _check(self, x, k):
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"the number of samples must be a positive int, got {k!r}")
        check_finite(x, "x")
        if self.decoder_kind == "bernoulli" and ((x < 0) | (x > 1)).any():
            raise ValueError(f"decoder='bernoulli' needs x in [0, 1], got values in "
                             f"[{x.min().item():.3g}, {x.max().item():.3g}]")


def _mlp(d_in: int, hidden: int, depth: int, d_out: int) -> nn.Sequential:
    if depth == 0:
        return nn.Sequential(nn.Linear(d_in, d_out))
    layers: list[nn.Module] = [nn.Linear(d_in, hidden), nn.SiLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(hidden, hidden), nn.SiLU()]
    return nn.Sequential(*layers, nn.Linear(hidden, d_out))


def _std_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    return torch.distributions.Normal(torch.zeros((), dtype=z.dtype, device=z.device), 1.0).log_prob(z).sum(1)
