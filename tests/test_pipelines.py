"""The small Stable Diffusion pipeline: the composition (text encoder -> guided latent denoiser ->
sampler -> decoder) against the same steps written out here, determinism, the save/load round
trip, negative prompts, a DiT in place of the UNet, and bad input and bad directories."""

import pytest
import torch

from diffusion_edu.autoencoder import Autoencoder
from diffusion_edu.denoiser import Denoiser
from diffusion_edu.nets.dit import DiT
from diffusion_edu.nets.unet import UNet
from diffusion_edu.pipelines import StableDiffusion
from diffusion_edu.samplers import dpm_solver
from diffusion_edu.schedules import DDPMSchedule, alphas_cumprod, ddpm_betas, time_grid
from diffusion_edu.sde import VPSDE
from diffusion_edu.text import TextEncoder, Tokenizer

PROMPTS = ["a thick seven", "一个粗笔画的数字七", "a thin, left-slanted one"]


def _randomise(*modules, seed=0):
    """Zero-initialised layers (residual branches, outputs) get small random values, so prompts
    and guidance change the images as they would after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                if p.ndim > 1 and not p.any():
                    p.copy_(0.2 * torch.randn(p.shape, generator=g))


def _pipe(net="unet", schedule=None):
    torch.manual_seed(0)
    ae = Autoencoder(1, 4, factor=4, base_channels=8, num_res_blocks=0)
    ae.fit_scale(torch.rand(16, 1, 16, 16) * 2 - 1)
    text = TextEncoder(Tokenizer.from_texts(PROMPTS + ["a seven"]).vocab, dim=16, depth=1, heads=2)
    if net == "unet":
        model = UNet(4, 4, 16, (1, 2), 1, attention_resolutions=(1, 2), context_dim=16, head_channels=8)
    else:
        model = DiT(4, 4, input_size=4, patch_size=2, dim=32, depth=2, heads=2, context_dim=16)
    _randomise(ae, text, model)
    schedule = schedule or DDPMSchedule(alphas_cumprod(ddpm_betas(100, "cosine")))
    return StableDiffusion(ae, model, text, schedule, prediction="eps", image_size=16)


def test_images_and_determinism():
    pipe = _pipe()
    a = pipe(PROMPTS, steps=4, generator=torch.Generator().manual_seed(1))
    b = pipe(PROMPTS, steps=4, generator=torch.Generator().manual_seed(1))
    c = pipe(PROMPTS, steps=4, generator=torch.Generator().manual_seed(2))
    assert a.shape == (3, 1, 16, 16) and torch.isfinite(a).all() and a.abs().max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    two = pipe("a seven", num_images_per_prompt=2, steps=4, generator=torch.Generator().manual_seed(1))
    assert two.shape == (2, 1, 16, 16) and not torch.equal(two[0], two[1])


def test_guidance_one_is_the_conditional_model_written_out():
    """w = 1: encode the prompts, wrap the net as a Denoiser bound to them, DPM-Solver++(2M) on the
    log-SNR grid from the same noise, decode: the pipeline gives exactly this."""
    pipe = _pipe()
    got = pipe(PROMPTS, steps=5, guidance=1.0, generator=torch.Generator().manual_seed(3))
    context, mask = pipe.text_encoder.encode(PROMPTS)
    den = Denoiser(pipe.net, pipe.schedule, "eps", context=context, context_mask=mask)
    x = pipe.schedule.prior_sample((3, 4, 4, 4), torch.Generator().manual_seed(3))
    with torch.no_grad():
        z = dpm_solver(den, x, time_grid(pipe.schedule, 5, "logsnr"), order=2)
        want = pipe.autoencoder.decode_scaled(z.float()).clamp(-1, 1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_guidance_and_negative_prompts_change_the_images():
    pipe = _pipe()
    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    w1 = pipe(PROMPTS[:1], steps=4, guidance=1.0, generator=g())
    w4 = pipe(PROMPTS[:1], steps=4, guidance=4.0, generator=g())
    neg = pipe(PROMPTS[:1], steps=4, guidance=4.0, negative_prompt="a thin one", generator=g())
    w0 = pipe(PROMPTS[:1], steps=4, guidance=0.0, generator=g())
    empty = pipe("", steps=4, guidance=1.0, generator=g())
    assert (w1 - w4).abs().max() > 1e-3 and (w4 - neg).abs().max() > 1e-3
    torch.testing.assert_close(w0, empty, rtol=0, atol=1e-5)  # w = 0 is the empty-prompt model


@pytest.mark.parametrize("net", ["unet", "dit"])
def test_save_and_load_give_the_same_images(tmp_path, net):
    pipe = _pipe(net, schedule=VPSDE() if net == "dit" else None)
    if net == "dit":  # continuous time in [0, 1]
        pipe.net = DiT(**{**pipe.net.config, "t_scale": 1000.0})
        _randomise(pipe.net)
    pipe.save_pretrained(tmp_path / "p")
    again = StableDiffusion.from_pretrained(tmp_path / "p")
    a = pipe(PROMPTS, steps=3, generator=torch.Generator().manual_seed(5))
    b = again(PROMPTS, steps=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert float(again.autoencoder.scale) == float(pipe.autoencoder.scale)


def test_bad_directories(tmp_path):
    pipe = _pipe()
    d = tmp_path / "p"
    pipe.save_pretrained(d)
    (d / "net.pt").unlink()
    with pytest.raises(FileNotFoundError, match="missing net.pt"):
        StableDiffusion.from_pretrained(d)
    (d / "net.pt").write_text("not a model")
    with pytest.raises(ValueError, match="net.pt is not a model file"):
        StableDiffusion.from_pretrained(d)
    pipe.save_pretrained(d)
    torch.save({"format": "something else"}, d / "pipeline.pt")
    with pytest.raises(ValueError, match="pipeline.pt is not a pipeline.pt"):
        StableDiffusion.from_pretrained(d)
    with pytest.raises(FileNotFoundError, match="no such pipeline directory"):
        StableDiffusion.from_pretrained(tmp_path / "nowhere")


def test_bad_input():
    pipe = _pipe()
    for kwargs, message in (({"sampler": "plms"}, "sampler must be one of"), ({"steps": 0}, "steps must be"),
                            ({"guidance": -1.0}, "guidance must be"), ({"num_images_per_prompt": 0}, "num_images")):
        with pytest.raises(ValueError, match=message):
            pipe("a seven", **kwargs)
    with pytest.raises(ValueError, match="prompt must be a string or a non-empty list"):
        pipe([])
    with pytest.raises(ValueError, match="negative_prompt must be one prompt or one per prompt"):
        pipe(PROMPTS, negative_prompt=["a", "b"], steps=2)
    with pytest.raises(ValueError, match="image_size must be a positive multiple"):
        StableDiffusion(pipe.autoencoder, pipe.net, pipe.text_encoder, pipe.schedule, image_size=18)


def test_text_conditioned_loss():
    """With no dropout it is dsm_loss of net(x, t, enc(prompt)); with dropout 1 - tiny every mask
    is cleared (the empty prompt); a bad dropout is refused."""
    from diffusion_edu.losses import dsm_loss
    from diffusion_edu.pipelines import TextConditioned, text_conditioned_loss

    pipe = _pipe()
    model = TextConditioned(pipe.net, pipe.text_encoder)
    ids, mask = pipe.text_encoder.tokenizer(PROMPTS)
    z0 = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    got = text_conditioned_loss(model, z0, ids, mask, pipe.schedule, prompt_dropout=0.0,
                                generator=torch.Generator().manual_seed(1))
    want = dsm_loss(lambda x, t: pipe.net(x, t, context=pipe.text_encoder(ids, mask), context_mask=mask), z0,
                    pipe.schedule, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    empty = torch.zeros_like(mask)
    all_dropped = text_conditioned_loss(model, z0, ids, mask, pipe.schedule, prompt_dropout=0.999999,
                                        generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    torch.rand(3, generator=g)  # the dropout draw comes first
    want_empty = dsm_loss(lambda x, t: pipe.net(x, t, context=pipe.text_encoder(ids, empty), context_mask=empty),
                          z0, pipe.schedule, generator=g)
    torch.testing.assert_close(all_dropped, want_empty, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="prompt_dropout must lie in"):
        text_conditioned_loss(model, z0, ids, mask, pipe.schedule, prompt_dropout=1.0)
