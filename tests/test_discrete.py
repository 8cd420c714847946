"""Discrete diffusion (chapter 13): the forward CTMCs against their matrix exponentials, the
masked ELBO and the samplers against exact tables (every identity checked by an independent
computation written here)."""

import itertools
import math

import numpy as np
import pytest
import torch

from diffusion_edu.discrete import (
    DiscreteSchedule, absorbing_rate_matrix, absorbing_transition, exact_logits_fn, masked_nelbo,
    perturb_absorbing, perturb_uniform, sample, uniform_rate_matrix, uniform_transition,
)


def gen(s=0):
    return torch.Generator().manual_seed(s)


def random_table(V, L, seed, concentration=0.3):
    """A correlated random distribution on V**L sequences (Dirichlet with small concentration)."""
    p = np.random.default_rng(seed).dirichlet(np.full(V ** L, concentration))
    return torch.from_numpy(p).reshape((V,) * L)


def empirical(x, V, L):
    idx = torch.zeros(x.shape[0], dtype=torch.long)
    for l in range(L):
        idx = idx * V + x[:, l]
    return torch.bincount(idx, minlength=V ** L).double() / x.shape[0]


def tv(p, q):
    return 0.5 * float((p.flatten() - q.flatten()).abs().sum())


def tv_bound(p, n):
    """Upper bound on E[TV(empirical of n draws, p)]: 1/2 sum_i sqrt(p_i (1 - p_i) / n) (Jensen)."""
    p = p.flatten()
    return 0.5 * float((p * (1 - p) / n).sqrt().sum())


def product_of_marginals(p):
    L = p.ndim
    out = torch.ones(())
    for l in range(L):
        m = p.sum(dim=[d for d in range(L) if d != l])
        out = out[..., None] * m
    return out


# --- forward processes ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_derivative_and_ends(kind):
    s = DiscreteSchedule(kind)
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    fd = (s.alpha(t + h) - s.alpha(t - h)) / (2 * h)
    assert torch.allclose(s.alpha_prime(t), fd, atol=1e-8)
    assert float(s.alpha(torch.tensor(0.0))) == 1.0 and abs(float(s.alpha(torch.tensor(1.0, dtype=torch.float64)))) < 1e-12


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("process", ["absorbing", "uniform"])
def test_transition_is_exponential_of_integrated_generator(kind, process):
    # Q_t = beta(t) Q0, so P(t) = expm(int_0^t beta Q0) = expm(-log(alpha(t)) Q0); and dP/dt = P Q_t
    s, V, t = DiscreteSchedule(kind), 3, 0.4
    rate, trans = ((absorbing_rate_matrix, absorbing_transition) if process == "absorbing"
                   else (uniform_rate_matrix, uniform_transition))
    Q = rate(V, t, s)
    assert torch.allclose(Q.sum(1), torch.zeros(V + 1, dtype=torch.float64), atol=1e-12)
    Q0 = Q / float(s.rate(torch.tensor(t, dtype=torch.float64)))
    P = torch.linalg.matrix_exp(-math.log(float(s.alpha(torch.tensor(t)))) * Q0)
    assert torch.allclose(trans(V, t, s), P, atol=1e-12)
    h = 1e-6
    dP = (trans(V, t + h, s) - trans(V, t - h, s)) / (2 * h)
    assert torch.allclose(dP, trans(V, t, s) @ Q, atol=1e-6)


def test_perturb_frequencies_match_transition():
    V, n, t = 3, 40000, 0.3
    x0 = torch.tensor([[0, 1, 2]]).repeat(n, 1)
    for perturb, trans in ((perturb_absorbing, absorbing_transition), (perturb_uniform, uniform_transition)):
        xt = perturb(x0, t, V, generator=gen(1))
        P = trans(V, t)
        for l in range(3):
            freq = torch.bincount(xt[:, l], minlength=V + 1).double() / n
            # 5 binomial standard errors
            assert (freq - P[l]).abs().max() < 5 * math.sqrt(0.25 / n), (perturb.__name__, l)


# --- the exact oracle and the ELBO -----------------------------------------------------------

def test_exact_logits_fn_is_bayes_rule():
    V, L = 3, 3
    p = random_table(V, L, 0)
    fn = exact_logits_fn(p)
    # position 0 masked, position 1 masked, position 2 = 1: p(x0 = v | x2 = 1) = sum_j p[v, j, 1] / sum
    post = fn(torch.tensor([[V, V, 1]]), None).exp()[0]
    cond = p[:, :, 1]
    assert torch.allclose(post[0], cond.sum(1) / cond.sum(), atol=1e-12)
    assert torch.allclose(post[1], cond.sum(0) / cond.sum(), atol=1e-12)
    assert torch.allclose(post[2], torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))


def analytic_nelbo(p, x):
    """The linear-schedule NELBO with the t-integral done in closed form: for a mask set M of
    size k, int_0^1 (1/t) t^k (1-t)^(L-k) dt = (k-1)! (L-k)! / L!."""
    V, L = p.shape[0], p.ndim
    total = 0.0
    for k in range(1, L + 1):
        c = math.factorial(k - 1) * math.factorial(L - k) / math.factorial(L)
        for M in itertools.combinations(range(L), k):
            keep = [l for l in range(L) if l not in M]
            # p(x_M-marginals | x_keep): condition by indexing, marginalise the other masked dims
            num_all = p[tuple(x[l] if l in keep else slice(None) for l in range(L))]  # dims = M in order
            den = float(num_all.sum())
            for j, l in enumerate(M):
                marg = num_all.sum(dim=[d for d in range(len(M)) if d != j]) if len(M) > 1 else num_all
                total += c * -math.log(float(marg[x[l]]) / den)
    return total


def test_nelbo_with_exact_posterior_is_minus_log_p_analytically():
    V, L = 3, 3
    p = random_table(V, L, 2, concentration=1.0)
    for x in [(0, 1, 2), (2, 2, 0), (1, 0, 1)]:
        assert abs(analytic_nelbo(p, x) + math.log(float(p[x]))) < 1e-10


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_masked_nelbo_with_exact_posterior_is_minus_log_p(kind):
    # every unmasking order gives the chain rule, so E[estimate] = -log p(x), any schedule
    V, L, reps = 3, 3, 3000
    p = random_table(V, L, 3, concentration=1.0)
    seqs = torch.cartesian_prod(*[torch.arange(V)] * L)  # (27, 3) in table order
    x = seqs.repeat(reps, 1)
    est = masked_nelbo(exact_logits_fn(p), x, gen(4), samples=2, schedule=DiscreteSchedule(kind))
    est = est.reshape(reps, V ** L)
    mean, se = est.mean(0), est.std(0) / math.sqrt(reps)
    target = -p.flatten().log()
    z = (mean - target) / se
    assert z.abs().max() < 5, z  # 5 standard errors, 27 sequences
    assert est.dtype == torch.float64 and est.shape == (reps, V ** L)


def test_masked_nelbo_bounds_a_wrong_model():
    # a model ignoring the context (independent marginals) has NELBO >= -log p on average (Gibbs)
    V, L = 3, 3
    p = random_table(V, L, 5)
    pm = product_of_marginals(p)
    marg = torch.stack([pm.sum(dim=[d for d in range(L) if d != l]) for l in range(L)])  # (L, V)
    fn = lambda x_t, t: marg.log().expand(x_t.shape[0], L, V)
    seqs, reps = torch.cartesian_prod(*[torch.arange(V)] * L), 400
    est = masked_nelbo(fn, seqs.repeat(reps, 1), gen(6), samples=4).reshape(reps, V ** L)
    # its exact value is -log prod_l marg_l(x_l): the same cross-entropy in every order, and
    # E[w(t) (1 - alpha(t))] = 1 per position
    z = (est.mean(0) + pm.flatten().log()) / (est.std(0) / math.sqrt(reps))
    assert z.abs().max() < 5, z
    # Gibbs: on average over the data it is above the entropy, the exact model's NELBO
    assert float((p.flatten() * est.mean(0)).sum()) > float((p.flatten() * -p.flatten().log()).sum())


# --- sampling ---------------------------------------------------------------------------------

def test_sample_one_token_a_step_reproduces_the_table():
    V, L, n = 3, 3, 20000
    p = random_table(V, L, 7)
    x = sample(exact_logits_fn(p), n, L, steps=L, generator=gen(8))
    assert x.shape == (n, L) and x.dtype == torch.long
    assert tv(empirical(x, V, L), p) < 1.5 * tv_bound(p, n)  # measured 0.011, bound 0.0125


def test_confidence_order_is_biased_towards_modes():
    # highest-confidence-first is not an exact sampler: measured TV 0.27, far above MC error 0.0125
    V, L, n = 3, 3, 20000
    p = random_table(V, L, 7)
    x = sample(exact_logits_fn(p), n, L, steps=L, generator=gen(8), order="confidence")
    assert tv(empirical(x, V, L), p) > 5 * tv_bound(p, n)


def test_sample_all_at_once_gives_product_of_marginals():
    V, L, n = 3, 3, 20000
    p = random_table(V, L, 7)
    pm = product_of_marginals(p)
    gap = tv(p, pm)
    assert gap > 0.3  # the table is strongly correlated (measured: 0.42 for this seed)
    emp = empirical(sample(exact_logits_fn(p), n, L, steps=1, generator=gen(9)), V, L)
    assert tv(emp, pm) < 1.5 * tv_bound(pm, n)
    assert tv(emp, p) > gap - 1.5 * tv_bound(pm, n)


def test_sample_non_divisible_steps_spreads_tokens():
    # L = 4, steps = 3: commits 1, 1, 2 tokens (floor((i+1) 4/3) - floor(i 4/3)); count masks seen
    V, L = 2, 4
    p = random_table(V, L, 10)
    fn, seen = exact_logits_fn(p), []
    def spy(x_t, t):
        seen.append(int((x_t == V).sum(-1)[0]))
        return fn(x_t, t)
    sample(spy, 5, L, steps=3, generator=gen(11), vocab_size=V)
    assert seen == [4, 3, 2]


def test_confidence_order_stays_in_the_support():
    # a sparse table: a sequence sampled one token a step from exact conditionals has p > 0
    V, L, n = 3, 3, 5000
    p = random_table(V, L, 12)
    p[p < 0.03] = 0
    p = p / p.sum()
    x = sample(exact_logits_fn(p), n, L, steps=L, generator=gen(13), order="confidence")
    emp = empirical(x, V, L)
    assert float(emp[p.flatten() == 0].sum()) == 0.0
    # whereas all-at-once leaves the support (measured mass outside it: 0.41)
    x1 = sample(exact_logits_fn(p), n, L, steps=1, generator=gen(14))
    assert float(empirical(x1, V, L)[p.flatten() == 0].sum()) > 0.05


def test_infilling_samples_the_conditional_table():
    V, L, n = 3, 3, 20000
    p = random_table(V, L, 15)
    fixed = torch.full((n, L), -1, dtype=torch.long)
    fixed[:, 1] = 2
    x = sample(exact_logits_fn(p), n, L, steps=2, generator=gen(16), fixed=fixed)
    assert (x[:, 1] == 2).all()
    cond = p[:, 2, :] / p[:, 2, :].sum()  # p(x0, x2 | x1 = 2)
    emp = torch.bincount(x[:, 0] * V + x[:, 2], minlength=V * V).double() / n
    assert tv(emp, cond) < 1.5 * tv_bound(cond, n)


# --- bad input --------------------------------------------------------------------------------

def test_bad_input_names_the_argument():
    V, L = 2, 2
    p = random_table(V, L, 17)
    fn = exact_logits_fn(p)
    with pytest.raises(ValueError, match="x must hold tokens"):
        masked_nelbo(fn, torch.tensor([[0, 2]]))
    with pytest.raises(ValueError, match="x must hold tokens"):
        masked_nelbo(fn, torch.tensor([[0, -1]]))
    with pytest.raises(ValueError, match="probs must be a distribution"):
        exact_logits_fn(p * 2)
    with pytest.raises(ValueError, match="probs must be a distribution"):
        exact_logits_fn(p - 0.5)
    with pytest.raises(ValueError, match="probs must be a tensor of shape"):
        exact_logits_fn(torch.ones(2, 3) / 6)
    for steps in (0, L + 1):
        with pytest.raises(ValueError, match="steps must be"):
            sample(fn, 4, L, steps)
    bad = lambda x_t, t: torch.zeros(x_t.shape[0], L, V + 1)
    with pytest.raises(ValueError, match="logits_fn must return"):
        masked_nelbo(bad, torch.tensor([[0, 1]]), vocab_size=V)
    with pytest.raises(ValueError, match="logits_fn must return"):
        sample(bad, 4, L, 1, vocab_size=V)
    with pytest.raises(ValueError, match="logits_fn must return"):
        sample(lambda x_t, t: torch.zeros(3), 4, L, 1)
    with pytest.raises(ValueError, match="fixed must hold"):
        sample(fn, 1, L, 1, fixed=torch.tensor([[0, 5]]))
    with pytest.raises(ValueError, match="order must be"):
        sample(fn, 1, L, 1, order="left")
    with pytest.raises(ValueError, match="x0 must hold tokens"):
        perturb_absorbing(torch.tensor([[3]]), 0.5, vocab_size=3)
    with pytest.raises(ValueError, match="kind must be"):
        DiscreteSchedule("sigmoid")
