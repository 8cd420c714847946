"""Training loop, EMA, resumable checkpoints, and safe model files."""

import math
import os
import pickle

import pytest
import torch

from diffusion_edu.losses import dsm_loss
from diffusion_edu.nets import TimeMLP
from diffusion_edu.sde import VPSDE
from diffusion_edu.toy import GaussianMixture
from diffusion_edu.training import EMA, load_model, save_model, train

GM = GaussianMixture([[-1.0, 0.0], [1.0, 0.0]], stds=0.3)
SDE = VPSDE()


def loss_fn(model, x0, gen):
    return dsm_loss(model, x0, SDE, generator=gen)


def _run(steps, checkpoint=None, seed=0, interrupt_at=None):
    torch.manual_seed(0)
    model = TimeMLP(dim=2, hidden=32, depth=2)
    data = GM.sample(512, generator=torch.Generator().manual_seed(1))

    def fn(m, x0, g, count=[0]):
        count[0] += 1
        if interrupt_at is not None and count[0] == interrupt_at + 1:
            raise KeyboardInterrupt
        return loss_fn(m, x0, g)

    return train(model, fn, data, steps, batch_size=64, lr=3e-3, ema_decay=0.9,
                 generator=torch.Generator().manual_seed(seed), checkpoint=checkpoint,
                 checkpoint_every=5, progress=False)


def test_loss_decreases():
    res = _run(300)
    first, last = sum(res.losses[:30]) / 30, sum(res.losses[-30:]) / 30
    assert last < 0.8 * first


def test_resume_is_exact(tmp_path):
    """Interrupted at step 7, resumed to 20: identical losses and weights to a straight run."""
    straight = _run(20)
    ck = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        _run(20, checkpoint=ck, interrupt_at=7)
    assert torch.load(ck, weights_only=True)["step"] == 7
    resumed = _run(20, checkpoint=ck)
    assert resumed.losses == straight.losses
    for a, b in zip(resumed.model.parameters(), straight.model.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(resumed.ema_model.parameters(), straight.ema_model.parameters()):
        assert torch.equal(a, b)


def test_ema_formula():
    m = torch.nn.Linear(2, 1)
    ema = EMA(m, decay=0.9)
    before = [p.clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    ema.update(m)
    for e, b, p in zip(ema.model.parameters(), before, m.parameters()):
        assert torch.allclose(e, 0.9 * b + 0.1 * p)
    with pytest.raises(ValueError, match="decay"):
        EMA(m, decay=1.0)


def test_save_load_round_trip_is_atomic(tmp_path):
    net = TimeMLP(dim=2, hidden=16, depth=1)
    path = tmp_path / "sub" / "model.pt"
    save_model(net, path)
    assert sorted(os.listdir(path.parent)) == ["model.pt"]  # no temporary file left behind
    loaded = load_model(path)
    x, t = torch.randn(4, 2), torch.rand(4)
    assert torch.equal(loaded(x, t), net(x, t)) and loaded.config == net.config
    with pytest.raises(ValueError, match="model must be one of"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "x.pt")


def test_training_module_and_train_function_are_distinct():
    """The loop lives in the module diffusion_edu.training; the package re-exports the function
    as diffusion_edu.train (no module shares its name with a re-exported function)."""
    import importlib
    import types

    import diffusion_edu
    import diffusion_edu.training as training

    assert isinstance(training, types.ModuleType) and diffusion_edu.train is training.train is train
    assert not importlib.util.find_spec("diffusion_edu.train")


def test_meta_round_trip(tmp_path):
    net = TimeMLP(dim=2, hidden=16, depth=1)
    save_model(net, tmp_path / "m.pt", meta={"prediction": "v", "timesteps": 50})
    loaded, meta = load_model(tmp_path / "m.pt", return_meta=True)
    assert meta == {"prediction": "v", "timesteps": 50} and loaded.config == net.config
    save_model(net, tmp_path / "plain.pt")
    assert load_model(tmp_path / "plain.pt", return_meta=True)[1] == {}


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoint_cannot_run_code(tmp_path):
    """A pickle that would call os.system is refused by weights_only loading."""
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"class": "TimeMLP", "payload": _Evil()}, f)
    with pytest.raises(pickle.UnpicklingError):
        load_model(path)


def test_bad_input():
    with pytest.raises(ValueError, match="steps must be a non-negative int"):
        train(TimeMLP(), loss_fn, torch.zeros(4, 2), -1)
    with pytest.raises(ValueError, match="data must be finite"):
        train(TimeMLP(), loss_fn, torch.full((4, 2), float("nan")), 1)


def test_vae_round_trip(tmp_path):
    from diffusion_edu.vae import VAE

    torch.manual_seed(0)
    vae = VAE(data_shape=(1, 8, 8), latent_dim=3, decoder="bernoulli")
    save_model(vae, tmp_path / "vae.pt")
    loaded = load_model(tmp_path / "vae.pt")
    z = torch.randn(3, 3)
    assert loaded.config == vae.config and torch.equal(loaded.decode(z), vae.decode(z))


def _tiny_unet_run(**kw):
    from diffusion_edu.losses import ddpm_loss
    from diffusion_edu.nets import UNet
    from diffusion_edu.schedules import alphas_cumprod, ddpm_betas

    torch.manual_seed(0)
    net = UNet(1, 1, 8, (1, 2), 1, (2,), num_classes=10)
    abar = alphas_cumprod(ddpm_betas(50))
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = torch.arange(32) % 10

    def loss_fn(model, batch, g):
        return ddpm_loss(model, batch[0], abar, generator=g, y=batch[1], label_dropout=0.2, null_label=10)

    return train(net, loss_fn, (x, y), 3, batch_size=8, progress=False, **kw)


def test_gpu_path_options_run_in_float32_weights_on_cpu():
    """bf16 autocast and channels-last (the GPU path) also run on a CPU; the weights, the EMA
    and the optimiser stay float32, and channels-last does not change the result beyond
    float32 rounding."""
    ref = _tiny_unet_run()
    last = _tiny_unet_run(channels_last=True)
    # compare losses and outputs, not single weights: Adam divides by sqrt(v), so a weight whose
    # gradient is ~0 (a zero-initialised bias) can move by up to lr per step on rounding noise
    torch.testing.assert_close(torch.tensor(last.losses), torch.tensor(ref.losses), rtol=1e-5, atol=0)
    x, t = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([1, 10, 20, 40])
    with torch.no_grad():
        torch.testing.assert_close(last.model(x.contiguous(memory_format=torch.channels_last), t),
                                   ref.model(x, t), rtol=1e-3, atol=1e-4)
    amp = _tiny_unet_run(amp_dtype=torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in amp.ema_model.parameters())
    assert all(map(math.isfinite, amp.losses))
    # bf16 keeps 8 bits of mantissa: the first loss agrees with float32 to ~1e-2 relative
    assert abs(amp.losses[0] - ref.losses[0]) < 0.05 * ref.losses[0]


def test_tuple_data_must_have_equal_lengths():
    with pytest.raises(ValueError, match="same first dimension"):
        train(TimeMLP(), lambda m, b, g: b[0].sum(), (torch.zeros(4, 2), torch.zeros(3)), 1)


@pytest.mark.slow
def test_compiled_training_matches_eager():
    """torch.compile is a GPU-path option; on a CPU the cold compile takes about a minute."""
    ref, comp = _tiny_unet_run(), _tiny_unet_run(compile=True)
    torch.testing.assert_close(torch.tensor(comp.losses), torch.tensor(ref.losses), rtol=1e-5, atol=0)
