# Every target depends on the environment, so a fresh clone needs no separate set-up step.
PYTHON_BOOT ?= python3.11
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
DATA_ROOT   ?= $(CURDIR)/data
DS          ?= 2026-11-28
DAYS        ?= 3
PYTEST_ARGS ?=

export SPARK_LOCAL_IP ?= 127.0.0.1
export PYTHONHASHSEED = 0

.PHONY: setup test test-slow test-all lint local-pipeline bench-prep bench-index lock clean bench-train \
        mlflow-ui bench-serve serve gpu-check bench-chunks bench-index-build bench-embed

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON_BOOT) >/dev/null || { echo "error: $(PYTHON_BOOT) not found (Python 3.11 is required)"; exit 1; }
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m jobs.spark --check-java
	touch $(STAMP)

# Test tiers: `make test` is the fast default (unit + small Spark tests, a few minutes);
# `make test-slow` the end-to-end ones (Airflow DAG runs, DDP, standalone clusters, real
# data sets); `make test-all` both (and gpu tests, which skip without a GPU).
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -m "" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The whole pipeline on this machine: sample logs (or your own: DATA=path FORMAT=movielens|
# amazon-seq|taobao|amazon-ratings) -> the daily DAG through Airflow (SQLite in ./airflow_home,
# Spark local, 2 training processes) -> MIND-K vs MIND-1 vs YouTube DNN -> a report with plots
# under $(DATA_ROOT)/reports/<run>/. LOCAL_PIPELINE_ARGS: more flags (--help lists them).
DATA                ?=
FORMAT              ?=
LOCAL_PIPELINE_ARGS ?=
local-pipeline: $(STAMP)
	$(PY) -m orchestration.local_pipeline --data-root $(DATA_ROOT) \
	  $(if $(DATA),--data $(DATA) --format $(FORMAT),--ds $(DS) --days $(DAYS)) $(LOCAL_PIPELINE_ARGS)

# The MLflow UI over the runs of $(DATA_ROOT) (sqlite:///$(DATA_ROOT)/mlflow.db, or
# MLFLOW_TRACKING_URI), bound to 127.0.0.1 only: open http://127.0.0.1:$(MLFLOW_PORT).
MLFLOW_PORT ?= 5000
mlflow-ui: $(STAMP)
	$(PY) -m mind_model.tracking --data-root $(DATA_ROOT) --port $(MLFLOW_PORT)

BENCH_PREP_ARGS ?=
bench-prep: $(STAMP)
	$(PY) -m bench.bench_prep $(BENCH_PREP_ARGS)

bench-chunks: $(STAMP)
	$(PY) -m bench.bench_chunks

bench-train: $(STAMP)
	$(PY) -m bench.bench_train

bench-index: $(STAMP)
	$(PY) -m bench.bench_index

# The index job's shard fill by 1 and 2 worker processes (bench/results/index_build.json).
# BENCH_INDEX_BUILD_ARGS: --items, --shards, --factory.
BENCH_INDEX_BUILD_ARGS ?=
bench-index-build: $(STAMP)
	$(PY) -m bench.bench_index_build $(BENCH_INDEX_BUILD_ARGS)

# The Spark embedding job alone at local[1] and local[2] (bench/results/embed.json).
# BENCH_EMBED_ARGS: --embed-users, --embed-checkouts before=/path/to/old/checkout,after=.
BENCH_EMBED_ARGS ?=
bench-embed: $(STAMP)
	$(PY) -m bench.bench_index --embed-only $(BENCH_EMBED_ARGS)

# The retrieval service under load on loopback, a publish and a rollback during the run;
# fails on any failed or mixed-version answer. BENCH_SERVE_ARGS: --items, --clients, ...
BENCH_SERVE_ARGS ?=
bench-serve: $(STAMP)
	$(PY) -m bench.bench_serve $(BENCH_SERVE_ARGS)

# NCCL DDP training, FAISS on GPUs, the service on GPU: timings in bench/results/gpu.json
# (~8 minutes on one large GPU); without a CUDA device it says why and exits 0.
gpu-check: $(STAMP)
	$(PY) -m bench.gpu_check

# The retrieval service over the published version under $(DATA_ROOT) (loopback:8080).
serve: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m serving.service --root $(DATA_ROOT)

# Rewrite the Kubernetes examples in infra/k8s/ from orchestration/k8s.py (a test fails when
# they differ from the code). `python -m orchestration.k8s --setup` prints the one-time objects.
.PHONY: k8s-examples
k8s-examples: $(STAMP)
	$(PY) -m orchestration.k8s --write infra/k8s

# Regenerate the fully pinned lock from requirements.in (needs the package registry).
lock:
	rm -rf .venv-lock && $(PYTHON_BOOT) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet -r requirements.in
	.venv-lock/bin/pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu/torch==\1/' > requirements.lock
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .pytest_cache spark-warehouse
