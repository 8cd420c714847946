"""Tests of diffusion_edu.interpret: the denoiser's Jacobian against finite differences, against a
second autograd route (a batch of D copies and one backward pass), and against the closed form of
the optimal denoiser of Gaussian data, J = alpha S (alpha^2 S + sigma^2 I)^-1."""

import pytest
import torch

from diffusion_edu import VPSDE, DDPMSchedule, Denoiser, GaussianMixture, UNet, alphas_cumprod, ddpm_betas
from diffusion_edu.interpret import MAX_DIM, asymmetry, denoiser_jacobian, effective_dimension, shrinkage_spectrum

torch.set_num_threads(1)


def random_spd(d, gen):
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    return a @ a.T / d + 0.05 * torch.eye(d, dtype=torch.float64)


def smooth_net(d, gen):
    """A nonlinear, non-symmetric map R^d -> R^d (float64) used as an x0-predicting 'network'."""
    w1 = torch.randn(d, 16, generator=gen, dtype=torch.float64)
    w2 = torch.randn(16, d, generator=gen, dtype=torch.float64) / 4

    def net(x, t):  # x: (B, d), t: (B,)
        return torch.tanh(x @ w1 + t[:, None]) @ w2

    return net


def test_jacobian_matches_central_differences():
    gen = torch.Generator().manual_seed(0)
    den = Denoiser(smooth_net(5, gen), VPSDE(), "x0")
    x = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    J = denoiser_jacobian(den, x, t)
    assert J.shape == (3, 5, 5) and J.dtype == torch.float64
    h = 1e-5
    fd = torch.empty(3, 5, 5, dtype=torch.float64)
    for j in range(5):
        e = torch.zeros(5, dtype=torch.float64)
        e[j] = h
        fd[:, :, j] = (den.x0(x + e, t) - den.x0(x - e, t)) / (2 * h)
    # central differences: truncation O(h^2 |f'''|) ~ 1e-10, round-off ~ 1e-16 / h ~ 1e-11
    assert (J - fd).abs().max() < 1e-8, (J - fd).abs().max()
    assert J.abs().max() > 0.1  # not a trivial map
    assert asymmetry(J).min() > 0.05  # this map is no posterior mean: its Jacobian is not symmetric


def test_gaussian_closed_form_eigenvalues_and_eigenvectors():
    gen = torch.Generator().manual_seed(1)
    d = 6
    cov = random_spd(d, gen)
    mean = torch.randn(d, generator=gen, dtype=torch.float64)
    sde = VPSDE()
    den = GaussianMixture(mean[None], covs=cov).denoiser(sde)
    lam, U = torch.linalg.eigh(cov)  # increasing
    for t in [0.05, 0.3, 0.7]:
        alpha, sigma = (c.item() for c in sde.marginal(t))
        x = torch.randn(2, d, generator=gen, dtype=torch.float64)
        J = denoiser_jacobian(den, x, t)
        # x_t = alpha x0 + sigma eps, x0 ~ N(m, S): E[x0 | x_t] = m + alpha S (alpha^2 S + sigma^2 I)^-1 (x_t - alpha m)
        closed = alpha * cov @ torch.linalg.inv(alpha**2 * cov + sigma**2 * torch.eye(d, dtype=torch.float64))
        # float64: the library goes through the score and a Cholesky solve (measured gap up to 4e-9 at
        # t = 0.05); a wrong formula (e.g. alpha missing) is off by > 1e-2
        assert (J - closed).abs().max() < 1e-7, (t, (J - closed).abs().max())
        assert (J[0] - J[1]).abs().max() < 1e-12  # linear denoiser: the same J at every x
        vals, vecs = shrinkage_spectrum(J, alpha)
        expect = (alpha**2 * lam / (alpha**2 * lam + sigma**2)).flip(0)  # decreasing
        assert (vals - expect).abs().max() < 1e-7, (vals, expect)
        assert ((vals > 0) & (vals < 1)).all()
        # eigenvectors: those of S (distinct eigenvalues here), up to sign
        overlap = (vecs[0].T @ U.flip(1)).diagonal().abs()
        assert (overlap > 1 - 1e-6).all(), overlap
        assert (effective_dimension(J, alpha) - expect.sum()).abs().max() < 1e-6
        assert asymmetry(J).max() < 1e-8


def test_exact_mixture_jacobian_is_symmetric_psd_and_can_exceed_one():
    # Tweedie: alpha J = (alpha^2 / sigma^2) Cov[x0 | x_t] >= 0. For a mixture of N(m_k, s^2 I) with
    # v = alpha^2 s^2 + sigma^2: x0_hat = (1 - alpha^2 s^2 / v) sum_k r_k m_k + (alpha s^2 / v) x, hence
    # alpha J = (1 - alpha^2 s^2 / v)(alpha^2 / v) Cov_r[m_k] + (alpha^2 s^2 / v) I. At x = 0 between modes at
    # (-2, 0) and (2, 0) the responsibilities are 1/2 each and Cov_r = diag(4, 0): the largest factor exceeds 1.
    sde = VPSDE()
    s = 0.1
    gm = GaussianMixture([[-2.0, 0.0], [2.0, 0.0]], stds=s)
    den = gm.denoiser(sde)
    t = 0.3
    alpha, sigma = (c.item() for c in sde.marginal(t))
    x = torch.tensor([[0.0, 0.0], [0.3, 0.5], [2.0, -1.0]], dtype=torch.float64)
    J = denoiser_jacobian(den, x, t)
    assert asymmetry(J).max() < 1e-10
    vals, vecs = shrinkage_spectrum(J, alpha)
    assert vals.min() > -1e-10, vals
    v = alpha**2 * s**2 + sigma**2
    floor = alpha**2 * s**2 / v
    expect = [(1 - floor) * alpha**2 / v * 4.0 + floor, floor]
    # measured gap 3e-7 (the library's softmax and component parameters); a wrong formula is off by > 1e-2
    assert (vals[0] - torch.tensor(expect, dtype=torch.float64)).abs().max() < 1e-5, (vals[0], expect)
    assert expect[0] > 2 and abs(vecs[0][0, 0].item()) > 1 - 1e-10  # along the line joining the modes
    assert vals[2, 0] < 1.0, vals  # near one mode: x0_hat barely moves


def test_unet_jacobian_matches_batched_backward():
    # An independent autograd route: D copies of x in one batch, backward with the identity as output gradient.
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    net = UNet(1, 1, base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(2,)).eval()
    for p in net.parameters():  # the last layer starts at zero (J = I / alpha): perturb it
        p.data.add_(0.05 * torch.randn(p.shape, generator=gen))
    sched = DDPMSchedule(alphas_cumprod(ddpm_betas(1000, "cosine")))
    den = Denoiser(net, sched, "eps")
    x = torch.randn(2, 1, 8, 8, generator=gen)
    t = torch.tensor([100.0, 600.0], dtype=torch.float64)
    den.nfe = 0
    J = denoiser_jacobian(den, x, t)
    assert den.nfe == 2  # one network call per input
    for b in range(2):
        xr = x[b:b + 1].repeat(64, 1, 1, 1).requires_grad_(True)
        out = den.x0(xr, t[b].item()).reshape(64, 64)
        (grad,) = torch.autograd.grad(out, xr, torch.eye(64))
        ref = grad.reshape(64, 64)  # row i: d out_i / d x
        # float32: the two routes sum the same products in different orders
        assert (J[b] - ref).abs().max() < 1e-4 * ref.abs().max(), (J[b] - ref).abs().max()
    alpha = sched.marginal(t)[0]
    assert (effective_dimension(J, alpha) - 64).abs().max() > 1  # the perturbed net is not the identity


def test_spectrum_and_dimension_without_batch_axis():
    J = torch.diag(torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64))
    vals, vecs = shrinkage_spectrum(J, 0.5)
    assert vals.tolist() == [1.0, 0.5, 0.25] and vecs.shape == (3, 3)
    assert effective_dimension(J, 0.5).item() == pytest.approx(1.75)
    assert asymmetry(J).item() == 0.0


def test_bad_inputs():
    sde = VPSDE()
    den = GaussianMixture([[0.0, 0.0]], stds=1.0).denoiser(sde)
    x = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="denoiser"):
        denoiser_jacobian(lambda x, t: x, x, 0.5)
    with pytest.raises(ValueError, match="x must"):
        denoiser_jacobian(den, torch.zeros(2, dtype=torch.float64), 0.5)
    with pytest.raises(ValueError, match="x must"):
        denoiser_jacobian(den, torch.zeros(2, 2, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="empty"):
        denoiser_jacobian(den, torch.zeros(0, 2, dtype=torch.float64), 0.5)
    with pytest.raises(ValueError, match="MAX_DIM"):
        denoiser_jacobian(den, torch.zeros(1, MAX_DIM + 1), 0.5)
    with pytest.raises(ValueError, match="finite"):
        denoiser_jacobian(den, torch.full((2, 2), float("nan")), 0.5)
    with pytest.raises(ValueError, match="t must"):
        denoiser_jacobian(den, x, torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="t must"):
        denoiser_jacobian(den, x, "0.5")
    with pytest.raises(ValueError, match="J must"):
        shrinkage_spectrum(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="J must be finite"):
        effective_dimension(torch.full((2, 2), float("inf")))
    with pytest.raises(ValueError, match="alpha"):
        shrinkage_spectrum(torch.eye(2), alpha=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        effective_dimension(torch.eye(2)[None].repeat(3, 1, 1), alpha=torch.ones(2))
    with pytest.raises(ValueError, match="non-zero"):
        asymmetry(torch.zeros(2, 2))
