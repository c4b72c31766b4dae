# Two commands for users: `make run` (install + fetch data + whole pipeline) and `make test`.
# uv bootstraps into pip's user folder (~/.local/bin on Linux), often not on PATH: the targets call
# it by its full path, and `make install` says how to reach it when `uv` alone would not work.
# (Not `python3 -m site --user-base`: inside a virtualenv it prints the path and still exits 1.)
UV ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)

.PHONY: install run test test-fast smoke ui plots

# Debian/Ubuntu's Python refuses plain `pip install --user` (PEP 668); a user install of uv is safe.
$(UV):
	python3 -m pip install --quiet --user "uv==0.13.*" \
	  || python3 -m pip install --quiet --user --break-system-packages "uv==0.13.*" \
	  || python3 -m pip install --quiet "uv==0.13.*"

install: $(UV)
	$(UV) sync --frozen
	@command -v uv >/dev/null 2>&1 || echo "note: uv is $(UV), which is not on your PATH. Use the make targets, \
	or $(UV) run <command>, or: export PATH=\"$(patsubst %/,%,$(dir $(UV))):\$$PATH\" (or: source .venv/bin/activate)"

# Pull what the remote has (always the inputs; outputs too once someone pushed them),
# then build whatever is missing or stale.
run: install
	$(UV) run dvc pull --allow-missing
	$(UV) run dvc repro

# The tests need only the versioned inputs: the archive and the ImageNet weights.
test: install
	$(UV) run dvc pull data/raw/fer2013_train.zip.dvc data/weights/*.dvc
	$(UV) run pytest -q

# The edit-test loop: no subprocesses, no browser, no dvc repro; two workers. It pulls the
# same versioned inputs as `make test` (a fresh clone has none).
test-fast: install
	$(UV) run dvc pull -q data/raw/fer2013_train.zip.dvc data/weights/*.dvc
	$(UV) run pytest -q -m "not slow and not proc" -n 2

# The whole pipeline on a tiny synthetic dataset in a scratch copy (a few minutes).
smoke: install
	rm -rf /tmp/fer-tiny && $(UV) run python -m ferpipe.pipeline.tiny /tmp/fer-tiny
	cd /tmp/fer-tiny && $(UV) run --project $(CURDIR) dvc repro

ui: install
	$(UV) run mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

# The plots of the workspace as one page, dvc_plots/index.html, that draws offline: .dvc/config names
# docs/plots/offline_template.html, which carries Vega, Vega-Lite and Vega-Embed instead of CDN links.
plots: install
	$(UV) run dvc plots show -o dvc_plots
