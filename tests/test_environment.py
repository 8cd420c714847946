"""pyproject.toml and environment.yml name the same packages.

Every dependency and every extra's package in pyproject.toml must appear in
environment.yml (conda-forge, or its ``pip:`` section) and vice versa, with the
same version constraint where either file gives one. Names are compared after
normalisation: lower case, ``_`` and ``.`` become ``-``, and conda's
``pytorch`` is pip's ``torch``. ``python``, ``pip`` and the ``-e .`` line are
not packages of the project and are ignored.

environment.yml is read with a small line parser (no PyYAML needed): it only
has to understand the flat ``dependencies:`` list and its nested ``pip:`` list.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the test extra installs tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
ENVIRONMENT = ROOT / "environment.yml"

CONDA_TO_PIP = {"pytorch": "torch"}
IGNORED = {"python", "pip"}

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)$")


def normalise(name: str) -> str:
    name = re.sub(r"[-_.]+", "-", name.strip().lower())
    return CONDA_TO_PIP.get(name, name)


def split_requirement(req: str) -> tuple[str, str]:
    """'jupyter-book >=1, <2 ; python_version<"3.11"' -> ('jupyter-book', '<2,>=1').

    Environment markers are dropped; the version constraint is returned with
    spaces removed and its clauses sorted, so that '>=1,<2' == '<2, >=1'.
    Conda's single '=' (e.g. 'numpy=1.26') is read as '=='.
    """
    req = req.split(";", 1)[0].split("#", 1)[0].strip()
    m = _NAME.match(req)
    if not m:
        raise ValueError(f"cannot parse requirement {req!r}")
    name, spec = m.group(1), m.group(2).replace(" ", "")
    clauses = []
    for clause in filter(None, spec.split(",")):
        if re.match(r"^=[^=]", clause):
            clause = "=" + clause
        clauses.append(clause)
    return normalise(name), ",".join(sorted(clauses))


def pyproject_packages(path: Path = PYPROJECT) -> dict[str, str]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    project = data["project"]
    reqs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        reqs.extend(extra)
    return _collect(reqs, str(path))


def environment_packages(path: Path = ENVIRONMENT) -> dict[str, str]:
    """The packages of environment.yml's dependencies (conda and pip)."""
    reqs: list[str] = []
    in_deps = False
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        text = line.strip()
        if indent == 0:
            in_deps = text.startswith("dependencies:")
            continue
        if not in_deps:
            continue
        if not text.startswith("- "):
            raise ValueError(f"{path.name}: unexpected line under dependencies: {raw!r}")
        item = text[2:].strip().strip("'\"")
        if item == "pip:":
            continue  # the nested pip list follows, one level deeper
        if item.startswith("-e ") or item.startswith("--"):
            continue  # the project itself, or a pip option
        reqs.append(item)
    return _collect(reqs, str(path))


def _collect(reqs: list[str], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for req in reqs:
        name, spec = split_requirement(req)
        if name in IGNORED:
            continue
        if name in out:
            raise AssertionError(f"{where}: {name!r} is listed twice")
        out[name] = spec
    return out


def test_files_exist():
    assert PYPROJECT.is_file()
    assert ENVIRONMENT.is_file()


def test_parsers_read_something():
    pip = pyproject_packages()
    conda = environment_packages()
    # guard against a parser that silently reads nothing
    for name in ("torch", "numpy", "pytest", "nbval"):
        assert name in pip, name
        assert name in conda, name


def test_every_pyproject_package_is_in_environment_yml():
    missing = sorted(set(pyproject_packages()) - set(environment_packages()))
    assert not missing, f"in pyproject.toml but not in environment.yml: {missing}"


def test_every_environment_yml_package_is_in_pyproject():
    extra = sorted(set(environment_packages()) - set(pyproject_packages()))
    assert not extra, f"in environment.yml but not in pyproject.toml: {extra}"


def test_version_constraints_agree():
    pip, conda = pyproject_packages(), environment_packages()
    differ = {
        name: (pip[name], conda[name])
        for name in set(pip) & set(conda)
        if pip[name] != conda[name]
    }
    assert not differ, f"version constraints differ (pyproject, environment.yml): {differ}"


def test_torch_is_a_range_not_a_pin():
    spec = pyproject_packages()["torch"]
    assert "==" not in spec, "torch must be a range; the pin belongs to the machine (TORCH_SPEC)"


def test_environment_installs_the_project_itself():
    lines = [line.strip() for line in ENVIRONMENT.read_text(encoding="utf-8").splitlines()]
    assert "- -e ." in lines


@pytest.mark.parametrize(
    "req, expected",
    [
        ("torch>=2.1", ("torch", ">=2.1")),
        ("pytorch >=2.1", ("torch", ">=2.1")),
        ("scikit_learn", ("scikit-learn", "")),
        ("POT", ("pot", "")),
        ("jupyter-book>=1,<2", ("jupyter-book", "<2,>=1")),
        ("jupyter-book >=1, <2", ("jupyter-book", "<2,>=1")),
        ("tomli; python_version < '3.11'", ("tomli", "")),
        ("numpy=1.26", ("numpy", "==1.26")),
        ("diffusers[torch]>=0.30", ("diffusers", ">=0.30")),
    ],
)
def test_split_requirement(req, expected):
    assert split_requirement(req) == expected


def test_drift_is_detected(tmp_path):
    """Removing a package from either file makes the comparison fail."""
    env = ENVIRONMENT.read_text(encoding="utf-8")
    drifted = tmp_path / "environment.yml"
    drifted.write_text(
        "\n".join(l for l in env.splitlines() if l.strip() != "- scipy") + "\n",
        encoding="utf-8",
    )
    assert "scipy" in environment_packages(ENVIRONMENT)
    assert "scipy" not in environment_packages(drifted)
    assert "scipy" in set(pyproject_packages()) - set(environment_packages(drifted))
