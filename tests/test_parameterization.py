"""Conversions between eps, x0, v, score and velocity predictions."""

import pytest
import torch

from diffusion_edu import parameterization as P


@pytest.mark.parametrize("vp", [True, False])
def test_round_trips(vp, gen):
    B = 6
    x0 = torch.randn(B, 3, 4, 4, generator=gen, dtype=torch.float64)
    eps = torch.randn(B, 3, 4, 4, generator=gen, dtype=torch.float64)
    alpha = torch.rand(B, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    sigma = (1 - alpha**2).sqrt() if vp else torch.rand(B, generator=gen, dtype=torch.float64) * 3 + 0.1
    a4, s4 = alpha[:, None, None, None], sigma[:, None, None, None]
    x = a4 * x0 + s4 * eps
    v = P.x0_eps_to_v(x0, eps, alpha, sigma)
    assert torch.allclose(v, a4 * eps - s4 * x0)
    assert torch.allclose(P.eps_to_x0(eps, x, alpha, sigma), x0)
    assert torch.allclose(P.x0_to_eps(x0, x, alpha, sigma), eps)
    assert torch.allclose(P.v_to_x0(v, x, alpha, sigma), x0)
    assert torch.allclose(P.v_to_eps(v, x, alpha, sigma), eps)
    score = P.eps_to_score(eps, sigma)
    assert torch.allclose(score, -eps / s4)
    assert torch.allclose(P.score_to_eps(score, sigma), eps)
    for kind, pred in [("eps", eps), ("x0", x0), ("v", v), ("score", score)]:
        assert torch.allclose(P.to_eps(pred, kind, x, alpha, sigma), eps)
    if vp:  # with alpha^2 + sigma^2 = 1 the familiar forms hold
        assert torch.allclose(P.v_to_x0(v, x, alpha, sigma), a4 * x - s4 * v)
    # the path velocity u = alpha' x0 + sigma' eps of flow matching, for any (alpha', sigma') with
    # alpha sigma' - sigma alpha' != 0: the pair (x0, eps) is recovered from (x, u)
    dalpha = -torch.rand(B, generator=gen, dtype=torch.float64) - 0.1
    dsigma = torch.rand(B, generator=gen, dtype=torch.float64) + 0.1
    u = dalpha[:, None, None, None] * x0 + dsigma[:, None, None, None] * eps
    assert torch.allclose(P.from_x0_eps(x0, eps, "velocity", alpha, sigma, dalpha, dsigma), u)
    x0_u, eps_u = P.to_x0_eps(u, "velocity", x, alpha, sigma, dalpha, dsigma)
    assert torch.allclose(x0_u, x0) and torch.allclose(eps_u, eps)
    for kind, pred in [("eps", eps), ("x0", x0), ("v", v), ("score", score), ("velocity", u)]:
        assert torch.allclose(P.to_eps(pred, kind, x, alpha, sigma, dalpha, dsigma), eps)
        for target, expected in [("x0", x0), ("v", v), ("score", score), ("velocity", u)]:
            assert torch.allclose(P.convert(pred, kind, target, x, alpha, sigma, dalpha, dsigma), expected)


def test_unknown_prediction():
    with pytest.raises(ValueError, match="prediction must be one of"):
        P.to_eps(torch.zeros(1, 2), "noise", torch.zeros(1, 2), 1.0, 1.0)
    with pytest.raises(ValueError, match="prediction must be one of"):
        P.convert(torch.zeros(1, 2), "eps", "noise", torch.zeros(1, 2), 1.0, 1.0)
    with pytest.raises(ValueError, match="needs the schedule's derivatives"):
        P.to_eps(torch.zeros(1, 2), "velocity", torch.zeros(1, 2), 0.5, 0.5)
