# Two commands for users: `make run` (install + fetch data + whole pipeline) and `make test`.
UV ?= $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")

.PHONY: install run test smoke ui

$(UV):
	python3 -m pip install --quiet --user "uv==0.13.*" || python3 -m pip install --quiet "uv==0.13.*"

install: $(UV)
	$(UV) sync --frozen

# Pull what the remote has (always the inputs; outputs too once someone pushed them),
# then build whatever is missing or stale.
run: install
	$(UV) run dvc pull --allow-missing
	$(UV) run dvc repro

# The tests need only the versioned inputs: the archive and the ImageNet weights.
test: install
	$(UV) run dvc pull data/raw/fer2013_train.zip.dvc data/weights/*.dvc
	$(UV) run pytest -q

# The whole pipeline on a tiny synthetic dataset in a scratch copy (a few minutes).
smoke: install
	rm -rf /tmp/fer-tiny && $(UV) run python -m ferpipe.tiny /tmp/fer-tiny
	cd /tmp/fer-tiny && $(UV) run --project $(CURDIR) dvc repro

ui: install
	$(UV) run mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000
