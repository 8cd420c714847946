"""`python -m diffusion_edu train-latent` and `generate`: a tiny run end to end, resuming, the same
seed giving the same file, and a bad pipeline directory."""

import hashlib

import pytest

from diffusion_edu.cli import main

TINY = ["--base-channels", "16", "--autoencoder-channels", "8", "--text-dim", "16", "--batch-size", "8",
        "--timesteps", "100", "--no-progress", "--checkpoint-every", "2"]


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_train_latent_then_generate(tmp_path):
    run = tmp_path / "run"
    assert main(["train-latent", "--steps", "3", "--autoencoder-steps", "2", "--out", str(run), *TINY]) == 0
    for name in ("autoencoder.pt", "text_encoder.pt", "net.pt", "pipeline.pt", "config.json"):
        assert (run / name).is_file(), name
    assert len((run / "losses.txt").read_text().split()) == 3
    # the same command with more steps continues the run: 5 losses, the first 3 unchanged
    first = (run / "losses.txt").read_text().split()
    assert main(["train-latent", "--steps", "5", "--autoencoder-steps", "2", "--out", str(run), *TINY]) == 0
    again = (run / "losses.txt").read_text().split()
    assert len(again) == 5 and again[:3] == first

    out = [tmp_path / f"{k}.png" for k in range(3)]
    common = ["generate", "--pipeline", str(run), "--prompt", "a thick seven", "--prompt", "一个数字七",
              "--num-samples", "2", "--steps", "3", "--guidance", "3"]
    assert main([*common, "--seed", "0", "--out", str(out[0])]) == 0
    assert main([*common, "--seed", "0", "--out", str(out[1])]) == 0
    assert main([*common, "--seed", "1", "--out", str(out[2])]) == 0
    assert _md5(out[0]) == _md5(out[1]) != _md5(out[2])


def test_generate_names_a_bad_pipeline(tmp_path):
    (tmp_path / "p").mkdir()
    with pytest.raises(SystemExit, match="missing autoencoder.pt"):
        main(["generate", "--pipeline", str(tmp_path / "p"), "--prompt", "a seven", "--out", str(tmp_path / "x.png")])
