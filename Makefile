# diffusion-edu: `make test` and `make lab` work on a fresh machine with
# Python 3.10+ and make; each target creates $(VENV) on first use.
#
#   make setup   create .venv and install the package with the test, compare, tensorboard and
#                notebooks (JupyterLab, jupyterlab-myst) extras
#   make test    run every test: unit tests and every notebook (quick budgets)
#   make lab     open the chapter notebooks in JupyterLab
#   make book    execute the notebooks and build the website into book/_build/html
#                (full budgets; DIFFUSION_EDU_QUICK=1 make book for the quick build)
#   make book-test  build the book in quick mode and check every page in headless Chromium
#   make student student copies of the notebooks (solutions stubbed) in student/
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
STAMP_BOOK := $(VENV)/.installed-book
# MathJax 3 from the npm registry, served by the site itself (no CDN).
MATHJAX_VERSION ?= 3.2.2
MATHJAX := book/.npm/node_modules/mathjax/es5/tex-chtml.js
# One execution cache per budget, so a quick build never serves a full one (and back);
# `--all` makes Sphinx re-read every page (seconds), while jupyter-cache still skips
# executing a chapter whose code has not changed since the last build with that budget.
BOOK_MODE := $(if $(filter 1 true yes on,$(DIFFUSION_EDU_QUICK)),quick,full)

# Quick budgets, one torch thread per worker (two workers on two cores),
# no display, and jupyter's platformdirs (silences a deprecation warning).
TEST_ENV := DIFFUSION_EDU_QUICK=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MPLBACKEND=Agg JUPYTER_PLATFORM_DIRS=1

.PHONY: setup test lab book book-test student clean distclean strip

setup: $(STAMP)

# Reinstalls only when pyproject.toml changes (or the venv is new).
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "diffusion-edu needs Python 3.10+, $(PYTHON) is " + sys.version.split()[0])'
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --upgrade pip
	$(VPY) -m pip install "$(TORCH_SPEC)"
	$(VPY) -m pip install -e ".[test,compare,tensorboard,notebooks]"
	touch $@

test: $(STAMP)
	$(TEST_ENV) $(VPY) -m pytest -n 2 --dist loadscope --nbval-lax --doctest-modules tests notebooks book/appendix_math.ipynb diffusion_edu $(PYTEST_ARGS)

# JupyterLab refuses to run as root (containers, cloud machines) unless told --allow-root.
LAB_ROOT := $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root,)
# Extra arguments for JupyterLab, e.g. LAB_ARGS='--no-browser --port 8890'.
LAB_ARGS ?=

# Serves the repository (chapters in notebooks/, the math appendix in book/) and opens notebooks/.
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ServerApp.default_url=/lab/tree/notebooks $(LAB_ROOT) $(LAB_ARGS)

$(STAMP_BOOK): $(STAMP)
	$(VPY) -m pip install -e ".[test,compare,tensorboard,book]"
	touch $@

$(MATHJAX):
	npm install --prefix book/.npm --no-audit --no-fund --no-save mathjax@$(MATHJAX_VERSION)

book: $(STAMP_BOOK) $(MATHJAX)
	mkdir -p book/_build/.jupyter_cache-$(BOOK_MODE) && ln -sfn .jupyter_cache-$(BOOK_MODE) book/_build/.jupyter_cache
	@echo "== building the book with $(BOOK_MODE) budgets"
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MPLBACKEND=Agg JUPYTER_PLATFORM_DIRS=1 \
		$(VENV)/bin/jupyter-book build book --all -W -n --keep-going
	rm -rf book/_build/html/_static/mathjax
	cp -r book/.npm/node_modules/mathjax/es5 book/_build/html/_static/mathjax

# The website test: quick build, then every page in headless Chromium (Debian's `chromium`).
book-test:
	DIFFUSION_EDU_QUICK=1 $(MAKE) book
	DIFFUSION_EDU_REQUIRE_BOOK=1 $(VPY) -m pytest -p no:cacheprovider tests/test_site.py $(PYTEST_ARGS)

student: $(STAMP)
	$(VPY) tools/make_student.py notebooks student

strip: $(STAMP)
	$(VENV)/bin/nbstripout notebooks/*.ipynb book/*.ipynb

clean:
	rm -rf book/_build student build dist .pytest_cache .hypothesis *.egg-info
	find . -path ./$(VENV) -prune -o -type d \( -name __pycache__ -o -name .ipynb_checkpoints \) -print -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) book/.npm
