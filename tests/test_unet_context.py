"""Text conditioning of the UNet: cross-attention against the equation written out here, padded
tokens with exactly no effect, the empty prompt, gradients, class labels alongside, saving, and
bad input."""

import math

import pytest
import torch

from diffusion_edu.nets.unet import CrossAttention, UNet
from diffusion_edu.training import load_model, save_model


def _randomise_zero_layers(net, seed=0):
    """The residual branches and the output start at zero (each block the identity); give every
    zero-initialised tensor small random values so labels and prompts change the output, as after
    training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1 and not p.any():
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return net


def _net(**kw):
    torch.manual_seed(0)
    return _randomise_zero_layers(UNet(4, 4, 32, (1, 2), 1, attention_resolutions=(1, 2), context_dim=16, **kw))


def test_cross_attention_equals_the_equation():
    torch.manual_seed(1)
    layer = CrossAttention(64, context_dim=8, head_channels=32)  # 2 heads of 32
    torch.nn.init.normal_(layer.proj.weight, std=0.2)
    x, c = torch.randn(2, 64, 3, 3), torch.randn(2, 5, 8)
    m = torch.tensor([[True, True, True, False, False], [True, False, True, True, True]])
    got = layer(x, c, m)
    # the equation, per example and head, with plain softmax over the real tokens
    q = layer.q(layer.norm(x)).flatten(2)  # (B, C, HW)
    kv = layer.kv(c)  # (B, L, 2C)
    k, v = kv[..., :64], kv[..., 64:]
    hs = torch.zeros(2, 64, 9)
    for b in range(2):
        real = m[b]
        for head in range(2):
            sl = slice(32 * head, 32 * head + 32)
            scores = q[b, sl].T @ k[b, real, sl].T / math.sqrt(32)  # (HW, L_real)
            hs[b, sl] = (scores.softmax(-1) @ v[b, real, sl]).T
    want = x + layer.proj(hs.reshape(2, 64, 3, 3))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_padded_tokens_have_no_effect_and_empty_prompt_is_none():
    net = _net()
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([10, 500, 990])
    c = torch.randn(3, 4, 16)
    m = torch.tensor([[True, True, False, False], [True, True, True, True], [False, False, False, False]])
    out = net(x, t, context=c, context_mask=m)
    c2 = c.clone()
    c2[~m] = 1e3 * torch.randn(int((~m).sum()), 16)  # garbage in every padded slot
    torch.testing.assert_close(net(x, t, context=c2, context_mask=m), out, rtol=0, atol=1e-5)
    # the first prompt alone, without its padding, gives the same output
    torch.testing.assert_close(net(x[:1], t[:1], context=c[:1, :2]), out[:1], rtol=0, atol=1e-5)
    # a row without real tokens is the empty prompt: the same as context=None
    torch.testing.assert_close(out[2:], net(x[2:], t[2:]), rtol=0, atol=1e-5)
    # and the prompt matters where there is one
    assert (net(x[:2], t[:2]) - out[:2]).abs().max() > 1e-2


def test_gradients_are_finite_with_empty_rows():
    net = _net()
    x = torch.randn(2, 4, 8, 8)
    c = torch.randn(2, 3, 16, requires_grad=True)
    m = torch.tensor([[True, False, False], [False, False, False]])
    net(x, 5.0, context=c, context_mask=m).square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    assert torch.isfinite(c.grad).all() and c.grad[1].abs().max() == 0 and c.grad[0, 0].abs().max() > 0
    assert c.grad[0, 1:].abs().max() == 0  # padded tokens get no gradient either


def test_labels_and_context_together_and_save_load(tmp_path):
    net = _net(num_classes=10)
    x, c = torch.randn(2, 4, 8, 8), torch.randn(2, 2, 16)
    y = torch.tensor([3, 7])
    out = net(x, 100, y, context=c)
    assert not torch.allclose(out, net(x, 100, torch.tensor([4, 7]), context=c))
    save_model(net, tmp_path / "m.pt")
    again = load_model(tmp_path / "m.pt")
    assert again.config["context_dim"] == 16
    torch.testing.assert_close(again(x, 100, y, context=c), out, rtol=0, atol=0)
    assert "context_dim" not in UNet(1, 1, 32, (1, 2), 1).config  # older configs are unchanged


def test_bad_context():
    net = _net()
    plain = UNet(4, 4, 32, (1, 2), 1)
    x = torch.randn(2, 4, 8, 8)
    with pytest.raises(ValueError, match="context_dim=None"):
        plain(x, 1.0, context=torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match=r"context must have shape \(2, tokens, 16\)"):
        net(x, 1.0, context=torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="context_mask must be a"):
        net(x, 1.0, context=torch.randn(2, 3, 16), context_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="context_mask was given without context"):
        net(x, 1.0, context_mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="context_dim must be None or a positive int"):
        UNet(4, 4, 32, (1, 2), 1, context_dim=0)


def test_pooled_context_is_the_masked_mean_through_a_linear_layer(tmp_path):
    """pooled_context=True adds W mean_j(c_j over real tokens) + b to the time embedding (Imagen):
    checked against the formula written here by hooking the first residual block's embedding."""
    from diffusion_edu.nets.unet import pool_context

    net = _net(pooled_context=True)
    assert net.config["pooled_context"] is True and "pooled_context" not in _net().config
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([10, 500, 990])
    c = torch.randn(3, 4, 16)
    m = torch.tensor([[True, True, False, False], [True, True, True, True], [False, False, False, False]])
    want_pool = torch.stack([c[0, :2].mean(0), c[1].mean(0), torch.zeros(16)])
    torch.testing.assert_close(pool_context(c, m), want_pool)
    seen = []
    hook = net.down[0][0].register_forward_hook(lambda mod, inp, out: seen.append(inp[1]))
    out = net(x, t, context=c, context_mask=m)
    hook.remove()
    want_emb = net.time_embed(t) + want_pool @ net.context_pool.weight.T + net.context_pool.bias
    torch.testing.assert_close(seen[0], want_emb, rtol=1e-5, atol=1e-5)
    # padding is still ignored exactly, and a row without tokens is the empty prompt (context=None)
    c2 = c.clone()
    c2[~m] = 1e3 * torch.randn(int((~m).sum()), 16)
    torch.testing.assert_close(net(x, t, context=c2, context_mask=m), out, rtol=0, atol=1e-5)
    # (a batch of 1 against a batch of 3: float32 round-off of differently blocked products, ~1e-5 relative)
    torch.testing.assert_close(out[2:], net(x[2:], t[2:]), rtol=1e-5, atol=1e-5)
    # the pooled path alone changes the output: zero every cross-attention's output projection
    # and the prompt still matters, through the embedding
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, CrossAttention):
                mod.proj.weight.zero_()
    assert (net(x[:2], t[:2], context=c[:2], context_mask=m[:2]) - net(x[:2], t[:2])).abs().max() > 1e-3
    save_model(net, tmp_path / "p.pt")
    torch.testing.assert_close(load_model(tmp_path / "p.pt")(x, t, context=c, context_mask=m),
                               net(x, t, context=c, context_mask=m), rtol=0, atol=0)
    with pytest.raises(ValueError, match="pooled_context=True needs a context_dim"):
        UNet(4, 4, 32, (1, 2), 1, pooled_context=True)
    with pytest.raises(ValueError, match="pooled_context must be True or False"):
        UNet(4, 4, 32, (1, 2), 1, context_dim=16, pooled_context="yes")
