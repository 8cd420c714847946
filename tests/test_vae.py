"""The VAE: shapes, the closed-form KL, the bound log p >= IWAE >= ELBO on a linear-Gaussian
VAE (probabilistic PCA) whose log p(x) is closed form, equality at the exact posterior."""

import math

import pytest
import torch
import torch.nn.functional as F

from diffusion_edu.vae import VAE


def test_shapes_vectors_and_images(gen):
    v = VAE(data_shape=2, latent_dim=3)
    mu, logvar = v.encode(torch.randn(7, 2))
    assert mu.shape == logvar.shape == (7, 3)
    assert v.decode(mu).shape == (7, 2) and v.elbo(torch.randn(7, 2), generator=gen).shape == (7,)
    img = VAE(data_shape=(1, 8, 8), decoder="bernoulli")
    x = torch.rand(5, 1, 8, 8, generator=gen)
    assert img.decode(img.encode(x)[0]).shape == (5, 1, 8, 8)
    assert img.sample(4, generator=gen).shape == (4, 1, 8, 8)
    assert set(img.sample(4, generator=gen, mean=False).unique().tolist()) <= {0.0, 1.0}
    assert img.iwae(x, k=3, generator=gen).shape == (5,)


def test_config_rebuilds_the_model():
    v = VAE(data_shape=(1, 8, 8), latent_dim=4, hidden=32, depth=1, decoder="gaussian", obs_std=0.3)
    w = VAE(**v.config)
    w.load_state_dict(v.state_dict())
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(v.encode(x)[0], w.encode(x)[0])


def test_kl_closed_form_against_monte_carlo(gen):
    """KL(q || N(0, I)) = E_q[log q(z) - log p(z)]; with n = 200k samples the SE of the mean is
    about sd / 450 (measured sd ~1.6 here); allow 5 SE."""
    mu = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    logvar = torch.tensor([[-1.0, 0.3, 0.0]], dtype=torch.float64)
    n = 200_000
    eps = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    z = mu + torch.exp(0.5 * logvar) * eps
    log_q = (-0.5 * eps**2 - 0.5 * logvar - 0.5 * math.log(2 * math.pi)).sum(1)
    log_p = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(1)
    d = log_q - log_p
    assert abs(d.mean() - VAE.kl(mu, logvar)[0]) < 5 * d.std() / math.sqrt(n)


def _ppca(gen, D=4, L=2, s=0.5):
    """A linear VAE with W of orthogonal columns, so that the exact posterior is diagonal."""
    vae = VAE(data_shape=D, latent_dim=L, depth=0, decoder="gaussian", obs_std=s).double()
    Q, _ = torch.linalg.qr(torch.randn(D, L, generator=gen, dtype=torch.float64))
    W = Q * torch.tensor([2.0, 0.7], dtype=torch.float64)  # W^T W = diag(4, 0.49)
    b = torch.randn(D, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        vae.decoder[0].weight.copy_(W)
        vae.decoder[0].bias.copy_(b)
    cov = W @ W.T + s**2 * torch.eye(D, dtype=torch.float64)
    log_p = torch.distributions.MultivariateNormal(b, cov).log_prob
    return vae, W, b, s, log_p


def _set_exact_posterior(vae, W, b, s):
    lam = (W * W).sum(0)  # diagonal of W^T W
    post_var = 1 / (1 + lam / s**2)  # (L,)
    A = post_var[:, None] * W.T / s**2  # posterior mean A (x - b)
    with torch.no_grad():
        enc = vae.encoder[0]
        enc.weight.zero_()
        enc.weight[:2] = A
        enc.bias.zero_()
        enc.bias[:2] = -A @ b
        enc.bias[2:] = post_var.log()


def test_elbo_equals_log_p_at_the_exact_posterior(gen):
    """With q(z|x) the exact posterior, log p(x, z) - log q(z | x) = log p(x) for every z: the
    one-sample importance weight (IWAE with k = 1) is exact to float64 round-off, and the ELBO
    (reconstruction estimated, KL closed form) equals log p up to its Monte Carlo error
    (per-sample sd measured < 1.5 here, n = 20,000: SE < 0.011; allow 0.06)."""
    vae, W, b, s, log_p = _ppca(gen)
    _set_exact_posterior(vae, W, b, s)
    x = 2 * torch.randn(50, 4, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(vae.iwae(x, k=1, generator=gen), log_p(x), atol=1e-10)
        assert (vae.elbo(x[:5], generator=gen, n_samples=20_000) - log_p(x[:5])).abs().max() < 0.06


def test_bound_chain_for_a_perturbed_encoder(gen):
    """For any encoder ELBO <= E[IWAE_k] <= log p(x). Encoder = exact posterior plus noise, 20
    points, each estimate repeated 40 times so that its standard error is measured; the gaps are
    averaged over the points and compared with 5 standard errors (IWAE's weights are heavy-tailed,
    so one call can land above log p; the mean cannot)."""
    vae, W, b, s, log_p = _ppca(gen)
    _set_exact_posterior(vae, W, b, s)
    with torch.no_grad():
        for p in vae.encoder.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    x = torch.randn(20, 4, generator=gen, dtype=torch.float64)
    lp = log_p(x)
    with torch.no_grad():
        elbo = torch.stack([vae.elbo(x, generator=gen, n_samples=100) for _ in range(40)]).mean(1)
        iwae = torch.stack([vae.iwae(x, k=100, generator=gen) for _ in range(40)]).mean(1)
    # each row: a mean over the 20 points of one repetition; SE over the 40 repetitions
    gap_elbo, gap_iwae = lp.mean() - elbo, lp.mean() - iwae
    se = lambda v: v.std() / math.sqrt(len(v))  # noqa: E731
    assert gap_elbo.mean() > 5 * se(gap_elbo), gap_elbo.mean()  # ELBO strictly below log p
    assert gap_iwae.mean() > -5 * se(gap_iwae), gap_iwae.mean()  # IWAE not above log p
    assert (gap_elbo - gap_iwae).mean() > 5 * se(gap_elbo - gap_iwae)  # IWAE tighter than ELBO


def test_gradients_reach_every_parameter(gen):
    vae = VAE(data_shape=(1, 8, 8), latent_dim=2, hidden=16)
    vae.elbo(torch.randn(8, 1, 8, 8, generator=gen), generator=gen).mean().backward()
    for name, p in vae.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_bernoulli_log_prob_is_the_cross_entropy(gen):
    vae = VAE(data_shape=6, latent_dim=2, decoder="bernoulli")
    x = (torch.rand(4, 6, generator=gen) < 0.5).float()
    z = torch.randn(4, 2, generator=gen)
    p = vae.decode(z)
    manual = (x * p.log() + (1 - x) * (1 - p).log()).sum(1)
    assert torch.allclose(vae.decoder_log_prob(x, z), manual, atol=1e-5)
    assert torch.allclose(-vae.decoder_log_prob(x, z),
                          F.binary_cross_entropy(p, x, reduction="none").sum(1), atol=1e-5)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        VAE(decoder="poisson")
    with pytest.raises(ValueError):
        VAE(obs_std=0.0)
    with pytest.raises(ValueError):
        VAE(data_shape=3).encode(torch.zeros(2, 4))
    with pytest.raises(ValueError):
        VAE(data_shape=3, decoder="bernoulli").elbo(torch.full((2, 3), 2.0))
    with pytest.raises(ValueError):
        VAE(data_shape=3).elbo(torch.zeros(2, 3), n_samples=0)
