# diffusion-edu: `make test` and `make lab` work on a fresh machine with
# Python 3.10+ and make; each target creates $(VENV) on first use.
#
#   make setup   create .venv and install the package with the test and compare extras
#   make test    run every test: unit tests and every notebook (quick budgets)
#   make lab     open the chapter notebooks in JupyterLab
#   make book    (placeholder) the website arrives with the website issue
#   make strip   strip outputs from notebooks/*.ipynb before committing
#   make clean   remove caches and build outputs (keeps .venv; `make distclean` removes it too)

PYTHON ?= python3
VENV ?= .venv
# The torch requirement installed FIRST into the venv. pyproject.toml asks only
# for a range (torch>=2.1); the exact build belongs to the machine, so the
# machine chooses it here. CI passes TORCH_SPEC=torch==2.13.0 (a CPU wheel that
# lies on its disk). It is passed to pip as one quoted argument, so ranges work:
# TORCH_SPEC='torch>=2.4,<3'. For a particular CUDA build set PIP_INDEX_URL or
# PIP_EXTRA_INDEX_URL in the environment.
TORCH_SPEC ?= torch
# Extra arguments for pytest, e.g. PYTEST_ARGS='-k sde -x' or PYTEST_ARGS='-m slow'.
PYTEST_ARGS ?=

VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STAMP_NOTEBOOKS := $(VENV)/.installed-notebooks

# Quick budgets, one torch thread per worker (two workers on two cores),
# no display, and jupyter's platformdirs (silences a deprecation warning).
TEST_ENV := DIFFUSION_EDU_QUICK=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MPLBACKEND=Agg JUPYTER_PLATFORM_DIRS=1

.PHONY: setup test lab book clean distclean strip

setup: $(STAMP)

# Reinstalls only when pyproject.toml changes (or the venv is new).
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "diffusion-edu needs Python 3.10+, $(PYTHON) is " + sys.version.split()[0])'
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --upgrade pip
	$(VPY) -m pip install "$(TORCH_SPEC)"
	$(VPY) -m pip install -e ".[test,compare]"
	touch $@

test: $(STAMP)
	$(TEST_ENV) $(VPY) -m pytest -n 2 --dist loadscope --nbval-lax --doctest-modules tests notebooks diffusion_edu $(PYTEST_ARGS)

$(STAMP_NOTEBOOKS): $(STAMP)
	$(VPY) -m pip install -e ".[test,compare,notebooks]"
	touch $@

lab: $(STAMP_NOTEBOOKS)
	$(VENV)/bin/jupyter lab notebooks/

book:
	@echo "make book: the Jupyter Book website is not built yet; it arrives with the website issue."
	@echo "Nothing was built. Read the chapters in notebooks/ (make lab)."
	@exit 1

strip: $(STAMP)
	$(VENV)/bin/nbstripout notebooks/*.ipynb

clean:
	rm -rf book/_build build dist .pytest_cache .hypothesis *.egg-info
	find . -path ./$(VENV) -prune -o -type d \( -name __pycache__ -o -name .ipynb_checkpoints \) -print -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
