"""The UNet and the UNet-encoder classifier: shapes, conditioning, gradients, invariants."""

import math

import pytest
import torch
import torch.nn.functional as F

from diffusion_edu.nets import Classifier, UNet
from diffusion_edu.nets.unet import ResBlock, SelfAttention
from diffusion_edu.training import load_model, save_model


def _randomise_zero_layers(net, gen):
    """The UNet zero-initialises the last layer of every residual branch and its output
    convolution (each branch starts as the identity, the output as 0); give those layers random
    weights so that outputs and gradients depend on every parameter."""
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return net


@pytest.mark.parametrize(
    "size, cin, cout, mults, attn",
    [(8, 1, 1, (1, 2), (2,)), (16, 3, 3, (1, 2, 2), (1, 4)), (32, 3, 6, (1, 2, 2, 2), (2,)),
     (12, 2, 2, (1, 1), ()), (24, 4, 4, (1, 2, 3, 4), (8,))],
)
def test_shapes_at_several_sizes_and_channel_counts(size, cin, cout, mults, attn, gen):
    net = UNet(cin, cout, 16, mults, 1, attn, head_channels=8)
    x = torch.randn(3, cin, size, size, generator=gen)
    assert net(x, torch.tensor([0, 10, 999])).shape == (3, cout, size, size)
    assert net(x, 5.0).shape == (3, cout, size, size)  # a float time means the same for all rows
    # the float64 schedule times a Denoiser passes give the same output as integer indices
    torch.testing.assert_close(net(x, torch.tensor([0.0, 10.0, 999.0], dtype=torch.float64)),
                               net(x, torch.tensor([0, 10, 999])), rtol=0, atol=0)


def test_zero_init_output_and_identity_branches(gen):
    net = UNet(1, 1, 16, (1, 2), 1, (2,))
    assert net(torch.randn(2, 1, 8, 8, generator=gen), torch.tensor([1, 2])).abs().max() == 0


def test_bad_inputs_raise_named_errors():
    net = UNet(1, 1, 16, (1, 2, 2), 1, (2,), num_classes=10)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(2, 1, 10, 10), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, H, W\)"):
        net(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="t must be"):
        net(torch.randn(2, 1, 8, 8), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="y must be"):
        net(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 11]))
    with pytest.raises(ValueError, match="attention_resolutions"):
        UNet(1, 1, 16, (1, 2), 1, (4,))
    with pytest.raises(ValueError, match="channel_mults"):
        UNet(1, 1, 16, (), 1, ())
    with pytest.raises(ValueError, match="unconditional"):
        UNet(1, 1, 16, (1, 2), 1, ())(torch.randn(2, 1, 8, 8), 1.0, torch.tensor([0, 1]))


def test_class_conditioning_and_null_class(gen):
    net = _randomise_zero_layers(UNet(1, 1, 16, (1, 2), 1, (2,), num_classes=10), gen)
    assert net.null_label == 10
    x, t = torch.randn(4, 1, 8, 8, generator=gen), torch.tensor([3, 300, 600, 900])
    null = torch.full((4,), 10)
    torch.testing.assert_close(net(x, t), net(x, t, null), rtol=0, atol=0)
    out0, out1 = net(x, t, torch.zeros(4, dtype=torch.long)), net(x, t, torch.ones(4, dtype=torch.long))
    assert (out0 - out1).abs().mean() > 1e-3  # labels change the prediction


def test_gradients_reach_every_parameter(gen):
    net = _randomise_zero_layers(UNet(2, 2, 16, (1, 2, 2), 1, (1, 2, 4), num_classes=3), gen)
    x = torch.randn(6, 2, 16, 16, generator=gen)
    y = torch.tensor([0, 1, 2, 3, 0, 1])  # includes the null class 3
    net(x, torch.randint(1000, (6,), generator=gen), y).pow(2).mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        if name == "class_embed.weight":
            assert (p.grad.abs().sum(1) > 0).all(), "every used label row gets a gradient"
        else:
            assert p.grad.abs().sum() > 0, name


def test_rows_are_independent(gen):
    """GroupNorm normalises each example on its own: a row's output does not depend on the
    rest of the batch (a BatchNorm UNet would fail this)."""
    net = _randomise_zero_layers(UNet(1, 1, 16, (1, 2), 1, (2,)), gen)
    x, t = torch.randn(5, 1, 8, 8, generator=gen), torch.arange(5) * 100
    # float32 rounding differs with the batch size in the fused attention kernel (~3e-6 seen);
    # a dependence through the normalisation would be of the order of the outputs (~0.1)
    torch.testing.assert_close(net(x, t)[:2], net(x[:2], t[:2]), rtol=1e-4, atol=2e-5)


def test_self_attention_equals_explicit_softmax(gen):
    attn = _randomise_zero_layers(SelfAttention(16, head_channels=8), gen)
    x = torch.randn(2, 16, 4, 4, generator=gen)
    # the formula written out: per head, softmax(q k^T / sqrt(d)) v over the H*W positions
    qkv = attn.qkv(attn.norm(x)).reshape(2, 3, 2, 8, 16)  # (B, 3, heads, d, HW)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    w = torch.softmax(q.transpose(-1, -2) @ k / math.sqrt(8), dim=-1)  # (B, heads, HW, HW)
    h = (w @ v.transpose(-1, -2)).transpose(-1, -2).reshape(2, 16, 4, 4)
    torch.testing.assert_close(attn(x), x + attn.proj(h), rtol=1e-5, atol=1e-5)


def test_resblock_scale_shift(gen):
    block = _randomise_zero_layers(ResBlock(8, 8, emb_dim=4), gen)
    x, emb = torch.randn(2, 8, 4, 4, generator=gen), torch.randn(2, 4, generator=gen)
    scale, shift = block.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
    h = block.norm2(block.conv1(F.silu(block.norm1(x)))) * (1 + scale) + shift
    torch.testing.assert_close(block(x, emb), x + block.conv2(F.silu(h)))


def test_channels_last_gives_the_same_output(gen):
    net = _randomise_zero_layers(UNet(3, 3, 16, (1, 2), 1, (2,)), gen)
    x, t = torch.randn(2, 3, 8, 8, generator=gen), torch.tensor([10, 500])
    ref = net(x, t)
    net = net.to(memory_format=torch.channels_last)
    torch.testing.assert_close(net(x.contiguous(memory_format=torch.channels_last), t), ref,
                               rtol=1e-4, atol=1e-5)


def test_save_and_load_round_trip(tmp_path, gen):
    net = _randomise_zero_layers(UNet(1, 1, 16, (1, 2), 1, (2,), num_classes=10, t_scale=1000.0), gen)
    save_model(net, tmp_path / "unet.pt")
    back = load_model(tmp_path / "unet.pt")
    x, t = torch.randn(2, 1, 8, 8, generator=gen), torch.rand(2, generator=gen)
    torch.testing.assert_close(back(x, t, torch.tensor([1, 2])), net(x, t, torch.tensor([1, 2])))


def test_classifier_shapes_and_time_conditioning(gen):
    clf = Classifier(3, 5, base_channels=16, channel_mults=(1, 2, 2))
    x = torch.randn(4, 3, 16, 16, generator=gen)
    assert clf(x).shape == (4, 5) and clf.features(x).shape == (4, 32)
    noisy = _randomise_zero_layers(Classifier(1, 10, 16, time_conditional=True), gen)
    x = torch.randn(2, 1, 8, 8, generator=gen)
    assert (noisy(x, torch.tensor([0, 0])) - noisy(x, torch.tensor([900, 900]))).abs().max() > 1e-4
    with pytest.raises(ValueError, match="t is required"):
        noisy(x)
    with pytest.raises(ValueError, match="not time-conditional"):
        clf(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_path_bf16_channels_last_matches_float32(gen):
    """On a GPU: bf16 autocast + channels-last give the float32 output to bf16 precision."""
    net = _randomise_zero_layers(UNet(3, 3, 32, (1, 2, 2), 1, (2,), num_classes=10), gen).cuda()
    x, t = torch.randn(8, 3, 32, 32, generator=gen).cuda(), torch.randint(1000, (8,)).cuda()
    y = torch.arange(8).cuda()
    ref = net(x, t, y)
    net = net.to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = net(x.contiguous(memory_format=torch.channels_last), t, y)
    # bf16 keeps 8 mantissa bits (relative rounding 2^-8 = 0.004 per operation)
    assert (out.float() - ref).norm() / ref.norm() < 0.05
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters())
