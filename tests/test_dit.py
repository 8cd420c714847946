"""The Diffusion Transformer: shapes, adaLN-Zero initialisation, prompt padding and the empty
prompt, class conditioning, attention and (un)patchify against hand-written computations,
parameter count, a small overfit, save/load and bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from diffusion_edu import training
from diffusion_edu.nets.dit import DiT, DiTBlock, sincos_position_embedding_2d
from diffusion_edu.training import load_model, save_model


def _small(**kw):
    cfg = dict(in_channels=4, out_channels=4, input_size=8, patch_size=2, dim=32, depth=2, heads=2,
               context_dim=16, num_classes=10)
    return DiT(**{**cfg, **kw})


def _randomise_zero_layers(net, gen):
    """adaLN-Zero starts every gate, the cross-attention projections and the final layer at 0;
    give those parameters random values so that the output depends on every input."""
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return net


@pytest.mark.parametrize("cin, cout, size, patch, ctx", [(4, 4, 8, 2, 16), (1, 2, 8, 4, None), (3, 6, 12, 3, 8),
                                                         (4, 4, 8, 1, None)])
def test_shapes(cin, cout, size, patch, ctx, gen):
    net = DiT(cin, cout, size, patch, dim=16, depth=1, heads=2, context_dim=ctx)
    x = torch.randn(3, cin, size, size, generator=gen)
    kw = {} if ctx is None else dict(context=torch.randn(3, 4, ctx, generator=gen))
    assert net(x, torch.tensor([0, 10, 999]), **kw).shape == (3, cout, size, size)
    assert net(x, 5.0).shape == (3, cout, size, size)  # a float time means the same for all rows
    # the float64 schedule times a Denoiser passes give the same output as integer indices
    _randomise_zero_layers(net, gen)
    torch.testing.assert_close(net(x, torch.tensor([0.0, 10.0, 999.0], dtype=torch.float64), **kw),
                               net(x, torch.tensor([0, 10, 999]), **kw), rtol=0, atol=0)
    assert net.pos_embed.shape == ((size // patch) ** 2, 16)


def test_zero_init_output_identity_blocks_and_one_step_later_not_zero(gen):
    net = _small()
    x, t = torch.randn(4, 4, 8, 8, generator=gen), torch.tensor([1.0, 100.0, 500.0, 999.0])
    ctx = torch.randn(4, 3, 16, generator=gen)
    assert net(x, t, context=ctx).abs().max() == 0  # zero-initialised final linear
    # every block starts as the identity, whatever its input
    h, c = torch.randn(4, 16, 32, generator=gen), torch.randn(4, 32, generator=gen)
    mask = torch.ones(4, 4, dtype=torch.bool)
    ctx1 = torch.randn(4, 4, 16, generator=gen)
    for block in net.blocks:
        assert torch.equal(block(h, c, ctx1, mask), h)
    # one optimiser step: the final layer receives a gradient (its input LayerNorm(h) is not 0),
    # and it is the only part that does: every other gradient passes through its zero weight
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    F.mse_loss(net(x, t, context=ctx), torch.randn(4, 4, 8, 8, generator=gen)).backward()
    grads = {n: p.grad.abs().max().item() for n, p in net.named_parameters() if p.grad is not None}
    assert grads["final_linear.weight"] > 0
    assert all(g == 0 for n, g in grads.items() if not n.startswith("final_linear"))
    opt.step()
    assert net(x, t, context=ctx).abs().max() > 1e-4  # Adam's first step moves weights by ~lr


def test_padded_context_tokens_have_exactly_no_effect(gen):
    net = _randomise_zero_layers(_small(), gen)
    x, t = torch.randn(3, 4, 8, 8, generator=gen), torch.tensor([3.0, 300.0, 900.0])
    ctx = torch.randn(3, 5, 16, generator=gen)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = net(x, t, context=ctx, context_mask=mask)
    changed = ctx.clone()
    changed[~mask] = 100 * torch.randn(int((~mask).sum()), 16, generator=gen)
    changed[0, 4] = float("nan")  # even NaN in a padded slot has no effect
    torch.testing.assert_close(net(x, t, context=changed, context_mask=mask), out, rtol=0, atol=0)
    # padded tokens get exactly zero gradient, real ones do not
    ctx_grad = ctx.clone().requires_grad_()
    net(x, t, context=ctx_grad, context_mask=mask).sum().backward()
    assert ctx_grad.grad[~mask].abs().max() == 0 and ctx_grad.grad[mask].abs().min() > 0
    # the same prompts without the padding: equal up to float32 reduction order (keys 3 vs 6)
    torch.testing.assert_close(net(x[:2], t[:2], context=ctx[:2, :2], context_mask=mask[:2, :2]), out[:2],
                               rtol=0, atol=1e-5)
    # and a real token does matter (so the checks above can fail)
    real = ctx.clone()
    real[0, 1] += 1.0
    assert (net(x, t, context=real, context_mask=mask)[0] - out[0]).abs().max() > 1e-3


def test_empty_prompt_is_finite_and_equals_no_context(gen):
    net = _randomise_zero_layers(_small(), gen)
    x, t = torch.randn(3, 4, 8, 8, generator=gen), torch.tensor([3.0, 300.0, 900.0])
    ctx = torch.randn(3, 4, 16, generator=gen)
    empty = torch.zeros(3, 4, dtype=torch.bool)
    out = net(x, t, context=ctx, context_mask=empty)
    assert torch.isfinite(out).all()
    # context=None: keys [null] instead of [null, 4 padded]: equal up to float32 reduction order
    torch.testing.assert_close(out, net(x, t), rtol=0, atol=1e-5)
    torch.testing.assert_close(out, net(x, t, context=torch.zeros(3, 0, 16)), rtol=0, atol=1e-5)
    # a batch mixing empty and real prompts (classifier-free guidance) gives each row its own answer
    mixed = torch.tensor([[0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    both = net(x, t, context=ctx, context_mask=mixed)
    torch.testing.assert_close(both[[0, 2]], out[[0, 2]], rtol=0, atol=1e-5)
    assert (both[1] - out[1]).abs().max() > 1e-3
    # the null token is what the empty prompt attends to: changing it changes the output
    with torch.no_grad():
        net.null_context.add_(1.0)
    assert (net(x, t) - out).abs().max() > 1e-3


def test_class_conditioning_after_training_steps(gen):
    net = _small(context_dim=None)
    x, t = torch.randn(4, 4, 8, 8, generator=gen), torch.full((4,), 50.0)
    y = torch.tensor([0, 1, 2, 3])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(3):  # step 1 trains the final linear; only then does the modulation get a gradient
        opt.zero_grad()
        F.mse_loss(net(x, t, y), torch.randn(4, 4, 8, 8, generator=gen)).backward()
        opt.step()
    same_x = x[:1].expand(4, -1, -1, -1)
    out = net(same_x, t, y)
    for i in range(1, 4):
        assert (out[i] - out[0]).abs().max() > 1e-5  # different labels, same x and t
    torch.testing.assert_close(net(x, t), net(x, t, torch.full((4,), net.null_label)), rtol=0, atol=0)
    assert net.null_label == 10 and net.class_embed.num_embeddings == 11


def test_attention_sublayers_against_hand_written_softmax(gen):
    """One block with random weights against its equations written out with explicit softmax,
    the cross-attention over [null, the real tokens only] (no mask at all)."""
    dim, heads, cd = 16, 2, 8
    block = _randomise_zero_layers(DiTBlock(dim, heads, 2.0, cd), gen)
    B, N, T = 2, 5, 4
    h, c = torch.randn(B, N, dim, generator=gen), torch.randn(B, dim, generator=gen)
    ctx = torch.randn(B, T, cd, generator=gen)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    out = block(h, c, ctx, mask)

    def attention(q, k, v):  # q: (L, dim), k, v: (M, dim) -> (L, dim), heads split by columns
        d = dim // heads
        return torch.cat([torch.softmax(q[:, i*d:(i+1)*d] @ k[:, i*d:(i+1)*d].T / math.sqrt(d), dim=-1)
                          @ v[:, i*d:(i+1)*d] for i in range(heads)], dim=1)

    def ln(a):
        return (a - a.mean(-1, keepdim=True)) / torch.sqrt(a.var(-1, unbiased=False, keepdim=True) + 1e-6)

    for b in range(B):
        mod = block.adaLN[1](F.silu(c[b]))
        sa, ca, ga, sm, cm, gm = mod[:dim], mod[dim:2*dim], mod[2*dim:3*dim], mod[3*dim:4*dim], \
            mod[4*dim:5*dim], mod[5*dim:]
        qkv = block.qkv(ln(h[b]) * (1 + ca) + sa)
        z = h[b] + ga * block.attn_proj(attention(qkv[:, :dim], qkv[:, dim:2*dim], qkv[:, 2*dim:]))
        cr = block.cross
        zn = ln(z) * cr.norm.weight + cr.norm.bias
        kv = cr.kv(ctx[b][mask[b]])  # the real tokens only
        z = z + cr.proj(attention(cr.q(zn), kv[:, :dim], kv[:, dim:]))
        z = z + gm * block.mlp(ln(z) * (1 + cm) + sm)
        torch.testing.assert_close(out[b], z, rtol=1e-4, atol=1e-5)


def test_unpatchify_and_position_embedding_against_loops(gen):
    net = DiT(3, 2, input_size=6, patch_size=3, dim=8, depth=1, heads=2)
    B, G, p, C = 2, 2, 3, 2
    img = torch.randn(B, C, 6, 6, generator=gen)
    tokens = torch.zeros(B, G * G, p * p * C)
    for r in range(G):
        for col in range(G):
            for i in range(p):
                for j in range(p):
                    tokens[:, r * G + col, (i * p + j) * C:(i * p + j + 1) * C] = img[:, :, r * p + i, col * p + j]
    assert torch.equal(net.unpatchify(tokens), img)
    # position embedding: the MAE / DiT formula entry by entry, k = dim / 4 frequencies
    G, dim = 3, 12
    pe, k = sincos_position_embedding_2d(G, dim), dim // 4
    for n in range(G * G):
        r, col = divmod(n, G)
        w = [10_000 ** (-i / k) for i in range(k)]
        want = [math.sin(r * wi) for wi in w] + [math.cos(r * wi) for wi in w] + \
               [math.sin(col * wi) for wi in w] + [math.cos(col * wi) for wi in w]
        torch.testing.assert_close(pe[n], torch.tensor(want), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dim, ratio, cd", [(32, 4.0, 16), (24, 2.5, None), (16, 1.0, 40)])
def test_parameter_count(dim, ratio, cd):
    hidden = int(dim * ratio)
    block = 6 * dim * dim + 6 * dim           # adaLN modulation: Linear(dim, 6 dim)
    block += 3 * dim * dim + 3 * dim          # qkv
    block += dim * dim + dim                  # attention output projection
    block += 2 * dim * hidden + hidden + dim  # MLP dim -> hidden -> dim
    if cd is not None:                        # LayerNorm (weight, bias) + q + kv + proj
        block += 2 * dim + (dim * dim + dim) + (2 * cd * dim + 2 * dim) + (dim * dim + dim)
    assert sum(p.numel() for p in DiTBlock(dim, 4, ratio, cd).parameters()) == block
    cin, cout, p, depth, K = 3, 5, 2, 3, 7
    total = (cin * p * p * dim + dim)                       # patchify convolution
    total += 2 * (dim * dim + dim)                          # time MLP (sinusoid of width dim)
    total += (K + 1) * dim                                  # classes + the null class
    total += (cd or 0)                                      # the null prompt token
    total += depth * block
    total += 2 * dim * dim + 2 * dim + dim * p * p * cout + p * p * cout  # final adaLN + linear
    net = DiT(cin, cout, 8, p, dim, depth, 4, context_dim=cd, num_classes=K, mlp_ratio=ratio)
    assert sum(q.numel() for q in net.parameters()) == total


def test_overfits_a_fixed_batch(gen):
    torch.manual_seed(0)
    net = _small()
    x, t = torch.randn(8, 4, 8, 8, generator=gen), torch.randint(0, 1000, (8,), generator=gen).float()
    target, ctx = torch.randn(8, 4, 8, 8, generator=gen), torch.randn(8, 3, 16, generator=gen)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(50):
        loss = F.mse_loss(net(x, t, context=ctx), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # measured: the loss falls 19x-36x over 5 seeds of weights and data. With the blocks,
    # patchify and final modulation frozen only a linear map of 32 fixed features per token to
    # 16 random targets (128 tokens) is left: measured 1.2x. So 10x needs the blocks to learn.
    assert losses[0] / losses[-1] > 10, losses[::10]


def test_save_load_round_trip(tmp_path, monkeypatch, gen):
    monkeypatch.setitem(training.MODEL_CLASSES, "DiT", DiT)
    net = _randomise_zero_layers(_small(mlp_ratio=2.0, t_scale=1000.0), gen)
    save_model(net, tmp_path / "dit.pt")
    loaded = load_model(tmp_path / "dit.pt")
    assert loaded.config == net.config and isinstance(loaded, DiT)
    x, t = torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([0.1, 0.9])
    ctx, mask = torch.randn(2, 3, 16, generator=gen), torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    y = torch.tensor([3, 10])
    net.eval()
    torch.testing.assert_close(loaded(x, t, y, ctx, mask), net(x, t, y, ctx, mask), rtol=0, atol=0)
    assert "pos_embed" not in net.state_dict()  # fixed, rebuilt from the config


def test_bad_input_raises_named_errors():
    net = _small()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match=r"x must have shape \(B, 4, 8, 8\)"):
        net(torch.randn(2, 4, 16, 16), t)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 4, 8, 8\)"):
        net(torch.randn(2, 3, 8, 8), t)
    with pytest.raises(ValueError, match="t must be"):
        net(x, torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="y must be"):
        net(x, t, torch.tensor([0, 11]))
    with pytest.raises(ValueError, match="context must be a float tensor of shape"):
        net(x, t, context=torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="context must be a float tensor"):
        net(x, t, context=torch.ones(2, 3, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="context_mask must be a bool tensor of shape"):
        net(x, t, context=torch.randn(2, 3, 16), context_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="context_mask must be a bool tensor of shape"):
        net(x, t, context=torch.randn(2, 3, 16), context_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="context_mask was given without context"):
        net(x, t, context_mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="no cross-attention"):
        _small(context_dim=None)(x, t, context=torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="no class conditioning"):
        _small(num_classes=None)(x, t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="input_size must be divisible by patch_size"):
        DiT(input_size=8, patch_size=3)
    with pytest.raises(ValueError, match="dim must be a multiple of 4 and of heads"):
        DiT(dim=30, heads=4)
    with pytest.raises(ValueError, match="depth must be a positive int"):
        DiT(depth=0)
    with pytest.raises(ValueError, match="context_dim must be None or a positive int"):
        DiT(context_dim=0)
    with pytest.raises(ValueError, match="t_scale must be a positive number"):
        DiT(t_scale=-1.0)
    with pytest.raises(ValueError, match="dim must be a positive multiple of 4"):
        sincos_position_embedding_2d(4, 6)
