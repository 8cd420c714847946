"""Moving digits and the space-time factorised VideoUNet: the rendering against a hand-written
placement, exact centre-of-mass motion with bounces, the roughness and constancy measures, the
crops, frame independence of the per-frame model (and its equality with the image UNet), frame
mixing of the temporal layers against hand-written computations, save/load and bad input."""

import pytest
import torch

from diffusion_edu import training
from diffusion_edu.data import load_digits
from diffusion_edu.nets.unet import UNet
from diffusion_edu.nets.video_unet import TemporalAttention, TemporalConv, VideoUNet
from diffusion_edu.training import load_model, save_model
from diffusion_edu.video import (centre_of_mass, centred_crops, frame_labels, hat_matrix, identity_constancy,
                                 motion_roughness, moving_digits)


def _randomise_zero_layers(net, gen):
    """The temporal layers and the output start at zero; give them weights so that every path acts."""
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return net


def _small(**kw):
    return VideoUNet(1, 1, 16, (1, 2), 1, attention_resolutions=(2,), head_channels=8, **kw)


# --- data --------------------------------------------------------------------------------------

def test_moving_digits_matches_a_bilinear_rendering_written_out(gen):
    """A frame is the digit's ink spread over the four integer corners around its sub-pixel corner
    with bilinear weights, nothing else in the frame; written out here with slices."""
    videos, labels, pos, vel = moving_digits(6, frames=5, size=14, generator=gen)
    digits, digit_labels = load_digits(8, "train")
    assert videos.shape == (6, 1, 5, 14, 14) and pos.shape == (6, 5, 2) and vel.shape == (6, 2)
    assert videos.min() >= -1 and videos.max() <= 1
    candidates = (digits[:, 0] + 1) / 2  # (N, 8, 8) ink
    for i in range(6):
        for t in (0, 2, 4):
            r, c = pos[i, t].tolist()
            r0, c0, fr, fc = int(r), int(c), r - int(r), c - int(c)
            best = float("inf")
            for j in torch.nonzero(digit_labels == labels[i])[:, 0]:
                canvas = torch.zeros(15, 15)  # one spare row and column for the r0 + 1 corner
                for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc),
                                  (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
                    canvas[r0 + dr:r0 + dr + 8, c0 + dc:c0 + dc + 8] += w * candidates[j]
                best = min(best, (2 * canvas[:14, :14] - 1 - videos[i, 0, t]).abs().max().item())
            assert best < 1e-5, (i, t, best)  # float32 round-off; a wrong digit or place is off by O(1)


def test_positions_follow_the_bouncing_law(gen):
    """The corner moves by exactly v per frame except where it is reflected at 0 or L."""
    size, T = 16, 8
    L = size - 8
    _, _, pos, vel = moving_digits(200, frames=T, size=size, generator=gen)
    assert pos.min() >= 0 and pos.max() <= L
    # simulate the bounce by hand: step by v, reflect when outside [0, L]
    p, v = pos[:, 0].clone(), vel.clone()
    for t in range(1, T):
        p = p + v
        low, high = p < 0, p > L
        p = torch.where(low, -p, torch.where(high, 2 * L - p, p))
        v = torch.where(low | high, -v, v)
        torch.testing.assert_close(pos[:, t], p, rtol=0, atol=1e-4)
    # speeds: |v| in [0.4, 1] * L / (T - 1) per axis: at most one bounce per axis
    assert vel.abs().min() >= 0.4 * L / (T - 1) - 1e-6 and vel.abs().max() <= L / (T - 1) + 1e-6
    flips = (torch.diff(torch.sign(torch.diff(pos, dim=1)), dim=1) != 0).sum(1)  # (N, 2) direction changes
    assert flips.max() <= 1


def test_centre_of_mass_moves_with_the_digit_and_roughness_is_zero(gen):
    videos, _, pos, _ = moving_digits(300, frames=8, generator=gen)
    com = centre_of_mass(videos)  # (N, T, 2)
    offset = com - pos  # the digit's own centre of mass in its box, the same in every frame
    assert (offset - offset[:, :1]).abs().max() < 1e-4  # float32 sums over 256 pixels of coordinates < 16
    assert offset.min() > 3.5 - 1.2 - 1e-4 and offset.max() < 3.5 + 1.2 + 1e-4  # measured span of the digits
    rough = motion_roughness(com)
    assert rough.max() < 1e-4
    # an independent computation: the com of a frame from its own formula, float64
    ink = ((videos[5, 0, 2].double() + 1) / 2)
    ii = torch.arange(16, dtype=torch.float64)
    r = (ink.sum(1) * ii).sum() / ink.sum()
    c = (ink.sum(0) * ii).sum() / ink.sum()
    torch.testing.assert_close(com[5, 2].double(), torch.stack([r, c]), rtol=0, atol=1e-5)


def test_roughness_trims_one_bounce_but_not_jitter(gen):
    t = torch.arange(8.0)
    line = torch.stack([1 + 0.7 * t, 9 - 0.9 * t], -1)  # (8, 2)
    bounce = torch.stack([1 + 0.7 * t, 4 - (4.5 - t).abs()], -1)  # a bounce between frames 4 and 5
    jitter = line + 0.5 * torch.randn(8, 2, generator=gen)
    r = motion_roughness(torch.stack([line, bounce, jitter]))
    assert r[0] < 1e-6 and r[1] < 1e-6
    # jitter of standard deviation s gives E|d2| = s sqrt(6) sqrt(2/pi) ~ 0.98 before trimming; the
    # trimmed mean keeps the 4 smallest of 6, well above 0.1
    assert r[2] > 0.1
    # with trim=0 the bounce shows: two second differences of 1 (|4.5 - t| bends by 2 over 2 frames)
    bent = motion_roughness(bounce[None], trim=0)
    assert abs(bent.item() - (1 + 1) / 6 / 2) < 1e-6  # mean over 6 differences and 2 axes


def test_crops_and_frame_labels(gen):
    videos, labels, pos, _ = moving_digits(20, frames=5, generator=gen)
    crops = centred_crops(videos)
    assert crops.shape == (20, 5, 1, 8, 8)
    # each crop holds most of the digit's ink: the digit is shifted by at most ~2 pixels
    ink_total = ((videos + 1) / 2).sum((1, 3, 4))  # (N, T)
    ink_crop = ((crops + 1) / 2).sum((2, 3, 4))
    assert (ink_crop / ink_total).min() > 0.75
    # a classifier that returns the label of the clip whatever it sees: constancy 1
    calls = []

    def oracle(x):
        calls.append(x.shape)
        out = torch.zeros(x.shape[0], 10)
        out[torch.arange(x.shape[0]), labels.repeat_interleave(5)] = 1
        return out

    fl = frame_labels(oracle, videos)
    assert calls == [(100, 1, 8, 8)] and torch.equal(fl, labels[:, None].expand(20, 5))
    assert identity_constancy(fl) == 1.0
    fl2 = fl.clone()
    fl2[3, 4] = (fl2[3, 4] + 1) % 10
    assert identity_constancy(fl2) == pytest.approx(19 / 20)


def test_hat_matrix_conserves_mass_and_first_moment():
    p = torch.tensor([0.0, 0.3, 2.75, 6.0], dtype=torch.float64)
    A = hat_matrix(p, 14)  # (4, 14, 8)
    torch.testing.assert_close(A.sum(1), torch.ones(4, 8, dtype=torch.float64))
    moment = torch.einsum("i,nia->na", torch.arange(14, dtype=torch.float64), A)
    torch.testing.assert_close(moment, torch.arange(8.0, dtype=torch.float64) + p[:, None])


# --- network -----------------------------------------------------------------------------------

def test_per_frame_model_is_the_image_unet_frame_by_frame(gen):
    video_net = _randomise_zero_layers(_small(temporal=False), gen).eval()
    image_net = UNet(1, 1, 16, (1, 2), 1, attention_resolutions=(2,), head_channels=8).eval()
    image_net.load_state_dict(video_net.state_dict())  # the same parameter names
    x, t = torch.randn(3, 1, 5, 8, 8, generator=gen), torch.tensor([3.0, 400.0, 999.0])
    with torch.no_grad():
        out = video_net(x, t)
        for f in range(5):
            torch.testing.assert_close(out[:, :, f], image_net(x[:, :, f], t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [dict(temporal=True), dict(temporal=True, temporal_attention=False),
                                dict(temporal=True, temporal_kernel=0)])
def test_permuting_frames_permutes_outputs_only_without_time(kw, gen):
    x, t = torch.randn(2, 1, 6, 8, 8, generator=gen), torch.tensor([50.0, 700.0])
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    image = _randomise_zero_layers(_small(temporal=False), gen).eval()
    video = _randomise_zero_layers(_small(**kw), gen).eval()
    with torch.no_grad():
        gap_image = (image(x[:, :, perm], t) - image(x, t)[:, :, perm]).abs().max().item()
        gap_video = (video(x[:, :, perm], t) - video(x, t)[:, :, perm]).abs().max().item()
        # changing one frame changes only that frame without temporal layers, every frame with them
        x2 = x.clone()
        x2[:, :, 0] += 1.0
        other_image = (image(x2, t) - image(x, t))[:, :, 1:].abs().max().item()
        other_video = (video(x2, t) - video(x, t))[:, :, 1:].abs().max().item()
    assert gap_image < 1e-5 and other_image < 1e-5  # float32 round-off only
    assert gap_video > 1e-3 and other_video > 1e-3  # layer outputs of size ~0.1: far above round-off


def test_temporal_conv_against_conv1d(gen):
    layer = _randomise_zero_layers(TemporalConv(8, 3), gen)
    B, T, C, H, W = 2, 5, 8, 3, 4
    h = torch.randn(B * T, C, H, W, generator=gen)
    z = torch.nn.functional.silu(layer.norm(h)).reshape(B, T, C, H, W).permute(0, 3, 4, 2, 1).reshape(-1, C, T)
    ref = layer.conv(z).reshape(B, H, W, C, T).permute(0, 4, 3, 1, 2).reshape(B * T, C, H, W)  # padding=1
    torch.testing.assert_close(layer(h, T), h + ref, rtol=1e-5, atol=1e-5)


def test_temporal_attention_against_softmax_per_pixel(gen):
    layer = _randomise_zero_layers(TemporalAttention(16, head_channels=8, max_frames=6), gen)
    with torch.no_grad():
        layer.rel_bias.copy_(torch.randn(layer.rel_bias.shape, generator=gen))
    B, T, C, H, W = 2, 4, 16, 3, 3
    h = torch.randn(B * T, C, H, W, generator=gen)
    out = layer(h, T)
    qkv = layer.qkv(layer.norm(h)).reshape(B, T, 3, 2, 8, H, W)  # (B, T, 3, heads, d, H, W)
    b, y, xx, head = 1, 2, 0, 1  # one clip, one pixel, one head, written out with a loop-free softmax
    q, k, v = (qkv[b, :, s, head, :, y, xx] for s in range(3))  # (T, d)
    bias = torch.tensor([[layer.rel_bias[head, i - j + 5].item() for j in range(T)] for i in range(T)])
    attn = torch.softmax(q @ k.T / 8 ** 0.5 + bias, dim=-1) @ v  # (T, d)
    # every pixel and head, batched, then the 1x1 output projection
    q, k, v = qkv.permute(0, 5, 6, 3, 2, 1, 4).unbind(4)  # 3 x (B, H, W, heads, T, d)
    i = torch.arange(T)
    bias_all = layer.rel_bias[:, i[:, None] - i[None, :] + 5]  # (heads, T, T)
    full = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5 + bias_all, -1) @ v  # (B, H, W, heads, T, d)
    torch.testing.assert_close(full[b, y, xx, head], attn, rtol=1e-5, atol=1e-6)
    z = full.permute(0, 4, 3, 5, 1, 2).reshape(B * T, C, H, W)  # (B T, C, H, W)
    torch.testing.assert_close(out, h + layer.proj(z), rtol=1e-4, atol=1e-5)
    assert out.shape == h.shape


def test_zero_init_temporal_layers_start_as_identity(gen):
    """At initialisation every temporal layer returns its input exactly (zero last layer), so the
    factorised network starts as the per-frame model."""
    net = _small()
    layers = [m for m in net.modules() if isinstance(m, (TemporalConv, TemporalAttention))]
    # encoder 2 blocks, middle 2, decoder 4, each with a convolution and an attention
    assert len(layers) == 2 * (2 + 2 + 4)
    for layer in layers:
        C = layer.norm.num_channels
        h = torch.randn(2 * 3, C, 4, 4, generator=gen)
        assert torch.equal(layer(h, 3), h)


def test_class_conditional_and_float_time(gen):
    net = _randomise_zero_layers(VideoUNet(1, 1, 16, (1, 2), 1, (), num_classes=10, head_channels=8), gen).eval()
    x = torch.randn(2, 1, 3, 8, 8, generator=gen)
    with torch.no_grad():
        a = net(x, 5.0)
        b = net(x, torch.tensor([5.0, 5.0], dtype=torch.float64))
        c = net(x, 5.0, torch.tensor([1, 2]))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3 and a.shape == x.shape


def test_save_load_roundtrip(tmp_path, monkeypatch, gen):
    monkeypatch.setitem(training.MODEL_CLASSES, "VideoUNet", VideoUNet)
    net = _randomise_zero_layers(_small(temporal=True, temporal_kernel=5, max_frames=8), gen).eval()
    assert VideoUNet(**net.config).config == net.config
    save_model(net, tmp_path / "video.pt")
    back = load_model(tmp_path / "video.pt")
    x, t = torch.randn(1, 1, 4, 8, 8, generator=gen), torch.tensor([20.0])
    with torch.no_grad():
        assert torch.equal(back(x, t), net(x, t))


def test_training_step_reaches_temporal_layers(gen):
    from diffusion_edu import DDPMSchedule, alphas_cumprod, ddpm_betas, ddpm_loss
    sched = DDPMSchedule(alphas_cumprod(ddpm_betas(100, "cosine")))
    net = VideoUNet(1, 1, 8, (1, 2), 1, (), head_channels=8)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = moving_digits(2, frames=3, size=10, generator=gen)[0]
    temporal = [m for m in net.modules() if isinstance(m, (TemporalConv, TemporalAttention))]
    for _ in range(3):  # the zero layers open one after the other (as chapter 8 shows for the UNet)
        opt.zero_grad()
        ddpm_loss(net, x, sched, generator=gen).backward()
        opt.step()
    # after three steps every temporal layer has received a gradient in its last (zero) layer
    for m in temporal:
        last = m.conv if isinstance(m, TemporalConv) else m.proj
        assert last.weight.grad is not None and last.weight.grad.abs().sum() > 0


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, name", [(dict(n=0), "n"), (dict(frames=1), "frames"), (dict(size=8), "size"),
                                      (dict(split="dev"), "split"), (dict(generator=3), "generator"),
                                      (dict(n=2.5), "n")])
def test_moving_digits_bad_input(kw, name):
    args = dict(n=2)
    args.update(kw)
    n = args.pop("n")
    with pytest.raises(ValueError, match=name):
        moving_digits(n, **args)


def test_measures_bad_input():
    frames = torch.zeros(2, 4, 16, 16)  # rank 4: a batch of images, not videos
    for fn in (centre_of_mass, centred_crops):
        with pytest.raises(ValueError, match="videos"):
            fn(frames)
    with pytest.raises(ValueError, match="videos"):
        frame_labels(lambda x: x, frames)
    with pytest.raises(ValueError, match="videos"):
        centre_of_mass(torch.zeros(2, 1, 4, 16, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="classifier"):
        frame_labels("clf", torch.zeros(1, 1, 2, 16, 16))
    with pytest.raises(ValueError, match="classifier"):
        frame_labels(lambda x: x, torch.zeros(1, 1, 2, 16, 16))  # returns images, not logits
    with pytest.raises(ValueError, match="window"):
        centred_crops(torch.zeros(1, 1, 2, 16, 16), window=17)
    with pytest.raises(ValueError, match="centres"):
        motion_roughness(torch.zeros(3, 8))
    with pytest.raises(ValueError, match="frames"):
        motion_roughness(torch.zeros(3, 4, 2))
    with pytest.raises(ValueError, match="trim"):
        motion_roughness(torch.zeros(3, 8, 2), trim=-1)
    with pytest.raises(ValueError, match="labels"):
        identity_constancy(torch.zeros(5))


def test_video_unet_bad_input():
    net = _small()
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.zeros(2, 1, 8, 8), 1.0)  # an image batch, rank 4
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.zeros(2, 3, 4, 8, 8), 1.0)  # wrong channels
    with pytest.raises(ValueError, match="divisible"):
        net(torch.zeros(2, 1, 4, 7, 8), 1.0)
    with pytest.raises(ValueError, match="max_frames"):
        _small(max_frames=4)(torch.zeros(1, 1, 5, 8, 8), 1.0)
    with pytest.raises(ValueError, match="t must"):
        net(torch.zeros(2, 1, 4, 8, 8), torch.zeros(3))
    with pytest.raises(ValueError, match="y was given"):
        net(torch.zeros(2, 1, 4, 8, 8), 1.0, torch.tensor([0, 1]))
    for kw, name in ((dict(temporal="yes"), "temporal"), (dict(temporal_kernel=2), "temporal_kernel"),
                     (dict(max_frames=0), "max_frames"), (dict(temporal_attention=1), "temporal_attention"),
                     (dict(temporal_kernel=0, temporal_attention=False), "temporal_kernel")):
        with pytest.raises(ValueError, match=name):
            _small(**kw)
