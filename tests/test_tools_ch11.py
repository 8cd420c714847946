"""tools/ch11_trials.py, the script behind chapter 11's recipe trials, runs end to end (tiny sizes)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("ch11_trials", ROOT / "tools" / "ch11_trials.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_trials_run_and_report_every_weight(capsys):
    rows = _tool().main(["--base", "8", "--steps", "3", "--evals", "2,3", "--cosine", "--pooled", "--ema", "0.9",
                         "--ae-steps", "2", "--clf-steps", "2", "--per-digit", "1", "--sampler-steps", "2"])
    assert [r["step"] for r in rows] == [2, 3]
    for r in rows:
        assert {f"{k} w{w}" for k in ("raw", "ema") for w in (1, 2, 4, 8)} <= set(r)
        for acc, ratio in (r[f"raw w{w}"] for w in (1, 2, 4, 8)):
            assert 0 <= acc <= 1 and ratio > 0
    assert capsys.readouterr().out.count("\n") == 2  # one JSON line per evaluation


def test_bad_arguments():
    with pytest.raises(SystemExit):
        _tool().parse_args(["--steps", "0"])
