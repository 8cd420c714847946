"""Training loop, EMA, resumable checkpoints, and safe model files."""

import math
import os
import pickle

import numpy as np
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
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_cannot_run_code(tmp_path):
    """A pickle that would call os.system is refused by weights_only loading, with a ValueError
    that names the file; the command never runs."""
    path, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    with open(path, "wb") as f:
        pickle.dump({"class": "TimeMLP", "payload": _Evil(marker)}, f, protocol=2)  # torch.save's protocol
    with pytest.raises(ValueError, match=r"evil.pt is not a model file.*refuses it") as info:
        load_model(path)
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)
    assert not marker.exists()
    # the same pickle run through plain pickle WOULD run the command: the test can fail
    with open(path, "rb") as f:
        pickle.load(f)
    assert marker.exists()


def test_bad_input():
    with pytest.raises(ValueError, match="steps must be a non-negative int"):
        train(TimeMLP(), loss_fn, torch.zeros(4, 2), -1)
    with pytest.raises(ValueError, match="data must be finite"):
        train(TimeMLP(), loss_fn, torch.full((4, 2), float("nan")), 1)
    bad = [
        (dict(batch_size=0), "batch_size must be a positive int"),
        (dict(batch_size=2.0), "batch_size must be a positive int"),
        (dict(lr=-1e-3), "lr must be a positive finite number"),
        (dict(lr=float("nan")), "lr must be a positive finite number"),
        (dict(grad_clip=0.0), "grad_clip must be a positive finite number or None"),
        (dict(checkpoint_every=0), "checkpoint_every must be a positive int"),
        (dict(amp_dtype=torch.float64), "amp_dtype must be None"),
        (dict(ema_decay=1.0), "decay must be a number in"),
        (dict(sample_fn=lambda m, s: torch.zeros(1, 1, 2, 2)), "sample_fn needs log_dir"),
        (dict(log_dir="unused", sample_fn=lambda m, s: None, sample_every=0), "sample_every must be a positive int"),
    ]
    for kw, message in bad:
        with pytest.raises(ValueError, match=message):
            train(TimeMLP(), loss_fn, torch.zeros(4, 2), 1, progress=False, **kw)
    with pytest.raises(ValueError, match="data must be a tensor, a tuple of tensors or a callable"):
        train(TimeMLP(), loss_fn, [[0.0, 0.0]], 1)
    with pytest.raises(ValueError, match="N >= 1"):
        train(TimeMLP(), loss_fn, torch.zeros(0, 2), 1)
    with pytest.raises(ValueError, match="loss_fn must be callable"):
        train(TimeMLP(), "dsm", torch.zeros(4, 2), 1)
    with pytest.raises(ValueError, match="model must be a torch.nn.Module with parameters"):
        train(torch.nn.ReLU(), loss_fn, torch.zeros(4, 2), 1)
    with pytest.raises(ValueError, match="parameter shapes differ"):
        EMA(TimeMLP(hidden=8)).update(TimeMLP(hidden=16))


def test_bad_files_name_the_file_and_the_fault(tmp_path):
    net = TimeMLP(dim=2, hidden=16, depth=1)
    with pytest.raises(ValueError, match="meta must be a dict from str to numbers and strings"):
        save_model(net, tmp_path / "m.pt", meta={"abar": torch.ones(3)})
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save(net.state_dict(), tmp_path / "weights_only.pt")
    save_model(net, tmp_path / "good.pt")
    state = torch.load(tmp_path / "good.pt", weights_only=True)
    torch.save(dict(state, config={**state["config"], "hidden": 8}), tmp_path / "wrong_config.pt")
    torch.save(dict(state, config={"width": 3}), tmp_path / "bad_config.pt")
    cases = {"notes.txt": "refuses it", "empty.pt": "not a file written by torch.save",
             "weights_only.pt": "needs a 'class'", "wrong_config.pt": "weights do not fit a TimeMLP",
             "bad_config.pt": "config does not build a TimeMLP"}
    for name, message in cases.items():
        with pytest.raises(ValueError, match=f"{name}.*{message}"):
            load_model(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="good.pt is not a training checkpoint"):  # a model file, not a checkpoint
        _run(2, checkpoint=tmp_path / "good.pt")


def _scalars(log_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc, [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_logs_loss_lr_and_sample_grids(tmp_path):
    pytest.importorskip("tensorboard")
    import io

    from PIL import Image

    calls = []

    def sample_fn(ema_model, step):  # a left half at -1 (black), a right half at +1 (white)
        calls.append(step)
        assert not torch.is_grad_enabled()
        return torch.cat([-torch.ones(3, 1, 4, 2), torch.ones(3, 1, 4, 2)], dim=-1)

    torch.manual_seed(0)
    res = train(TimeMLP(dim=2, hidden=32, depth=2), loss_fn, GM.sample(512, generator=torch.Generator().manual_seed(1)),
                12, batch_size=64, lr=3e-3, generator=torch.Generator().manual_seed(0), progress=False,
                log_dir=tmp_path / "tb", sample_fn=sample_fn, sample_every=5)
    acc, loss = _scalars(tmp_path / "tb", "train/loss")
    assert [s for s, _ in loss] == list(range(12))
    # event files store float32
    assert [v for _, v in loss] == pytest.approx(res.losses, rel=1e-6)
    assert [(e.step, e.value) for e in acc.Scalars("train/lr")] == [(s, pytest.approx(3e-3)) for s in range(12)]
    assert calls == [5, 10, 12]  # every sample_every steps and the final model
    images = acc.Images("samples")
    assert [e.step for e in images] == [5, 10, 12]
    pixels = torch.from_numpy(np.array(Image.open(io.BytesIO(images[-1].encoded_image_string)).convert("L")))
    assert pixels.min() == 0 and pixels.max() == 255  # [-1, 1] is mapped onto the full grey range


def test_tensorboard_log_of_a_resumed_run_is_the_straight_run(tmp_path):
    pytest.importorskip("tensorboard")

    def logged(**kw):
        torch.manual_seed(0)
        model = TimeMLP(dim=2, hidden=32, depth=2)
        data = GM.sample(512, generator=torch.Generator().manual_seed(1))
        count = [0]

        def fn(m, x0, g):
            count[0] += 1
            if kw.get("interrupt_at") is not None and count[0] == kw["interrupt_at"] + 1:
                raise KeyboardInterrupt
            return loss_fn(m, x0, g)

        return train(model, fn, data, 20, batch_size=64, lr=3e-3, generator=torch.Generator().manual_seed(0),
                     checkpoint=kw.get("checkpoint"), checkpoint_every=5, progress=False, log_dir=kw["log_dir"])

    logged(log_dir=tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        logged(log_dir=tmp_path / "resumed", checkpoint=tmp_path / "run.ckpt", interrupt_at=7)
    logged(log_dir=tmp_path / "resumed", checkpoint=tmp_path / "run.ckpt")
    straight, resumed = _scalars(tmp_path / "straight", "train/loss")[1], _scalars(tmp_path / "resumed", "train/loss")[1]
    assert [s for s, _ in resumed] == list(range(20)) and resumed == straight


def test_training_without_tensorboard_warns_and_runs(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` now raises ImportError
    with pytest.warns(UserWarning, match="tensorboard package is not installed"):
        res = train(TimeMLP(dim=2, hidden=8, depth=1), loss_fn, GM.sample(64), 3, batch_size=8, progress=False,
                    log_dir=tmp_path / "tb", sample_fn=lambda m, s: torch.zeros(1, 1, 2, 2))
    assert len(res.losses) == 3 and not (tmp_path / "tb").exists()


def test_sample_fn_must_return_images(tmp_path):
    pytest.importorskip("tensorboard")
    with pytest.raises(ValueError, match=r"sample_fn must return images \(B, C, H, W\)"):
        train(TimeMLP(dim=2, hidden=8, depth=1), loss_fn, GM.sample(64), 2, batch_size=8, progress=False,
              log_dir=tmp_path, sample_fn=lambda m, s: torch.zeros(2, 2), sample_every=1)


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
