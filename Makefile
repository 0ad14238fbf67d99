# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each creates or refreshes .venv first; a second run skips the install (stamp file).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
REQS := pyproject.toml requirements/constraints.txt requirements/torchrec.txt
TORCH_PAIR ?= cpu
STAMP := $(VENV)/.installed-$(TORCH_PAIR)

.PHONY: setup setup-gpu demo test test-fast bench bench-smoke lint clean

setup: $(STAMP)

$(STAMP): $(REQS) requirements/torch-$(TORCH_PAIR).txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=...)"; exit 1; }
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	@echo "installing the stack into $(VENV) (first time: a few minutes)"
	$(PIP) install -r requirements/torch-$(TORCH_PAIR).txt -r requirements/torchrec.txt -c requirements/constraints.txt
	$(PIP) install -e '.[$(TORCH_PAIR),test,prod,spark,duckdb]' -c requirements/constraints.txt
	@# last, so no later pip run reports its undeclared-on-CPU `fbgemm-gpu` requirement
	$(PIP) install --no-deps torchrec==1.8.0
	@rm -f $(VENV)/.installed-*
	@touch $@

# The CUDA pair (torch CUDA build + fbgemm-gpu) for training on NVIDIA GPUs.
setup-gpu:
	$(MAKE) setup TORCH_PAIR=gpu

demo: setup
	$(BIN)/retrain demo

# The suite runs on TEST_WORKERS processes (pytest-xdist): its long end-to-end tests (the
# production stack, the demo, Airflow runs) wait on subprocesses and servers much of the time.
TEST_WORKERS ?= 2
test: setup chromium java
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal

# The inner loop: every test not marked `slow` (each slow one takes over 10 s); make test runs them all.
test-fast: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not slow"

# The report test opens the page in headless Chromium (Debian's chromium + chromium-driver);
# as root they are installed when missing, otherwise the target says what to run.
.PHONY: chromium
chromium:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Chromium for the report test (apt-get install chromium chromium-driver)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null \
	      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; } \
	      || { echo "error: could not install chromium chromium-driver with apt-get"; exit 1; }; \
	  else \
	    echo "error: the report test needs Chromium: apt-get install -y chromium chromium-driver (as root)"; exit 1; \
	  fi; \
	fi

# Feast's Spark offline store (features/feature_store.spark.yaml, tests/data/test_spark_store.py) runs PySpark,
# which needs a Java 17+ runtime: as root it is installed from Debian's packages when missing, otherwise
# the target says what to run.
.PHONY: java
java:
	@if ! command -v java >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Java for Spark (apt-get install openjdk-17-jre-headless)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q openjdk-17-jre-headless >/dev/null \
	      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q openjdk-17-jre-headless >/dev/null; } \
	      || { echo "error: could not install openjdk-17-jre-headless with apt-get"; exit 1; }; \
	  else \
	    echo "error: Feast on Spark needs Java 17+: apt-get install -y openjdk-17-jre-headless (as root)"; exit 1; \
	  fi; \
	fi

bench: setup java
	@ls bench/*.py >/dev/null 2>&1 || { echo "no benchmarks yet"; exit 0; }
	@for b in quality train_speed data drift decisions pipeline faults scheduler sparse_optimizer backtest serve monitoring scale offline_store distributed; do echo "== bench/$$b.py"; $(BIN)/python bench/$$b.py || exit 1; done

# Every benchmark above on its smallest inputs (--smoke), results into a temporary folder:
# checks that `make bench` runs end to end, leaving bench/results/ untouched (tests/test_bench_smoke.py).
bench-smoke: setup java
	@out=$$(mktemp -d); for b in quality train_speed data drift decisions pipeline faults scheduler sparse_optimizer backtest serve monitoring scale offline_store distributed; do \
	  echo "== bench/$$b.py --smoke"; $(BIN)/python bench/$$b.py --smoke --out $$out/$$b || exit 1; done; \
	echo "smoke results in $$out"

clean:
	rm -rf .retrain features/data mlruns

# The production stack on this machine's PostgreSQL and Redis (127.0.0.1, started if down):
# MLflow server on PostgreSQL, Airflow metadata on PostgreSQL (LocalExecutor), Feast on
# PostgreSQL + Redis; one full retraining cycle against it; then everything it started is
# stopped and its databases dropped (infra/README.md).
# EXECUTOR=celery: CeleryExecutor (Redis broker, PostgreSQL results) with two workers on this
# machine, one per queue (default, train); the check asserts which worker ran each task.
EXECUTOR ?= local
.PHONY: prod-check
prod-check: setup
	$(BIN)/python infra/prod_check.py --executor $(EXECUTOR)

# Airflow 3 on this machine: `airflow standalone` (scheduler, DAG processor, triggerer, API
# server + UI at http://127.0.0.1:8080, bound to 127.0.0.1 only) with this project's dags/,
# SQLite metadata under .retrain/airflow. The admin password is printed on start and kept
# in .retrain/airflow/simple_auth_manager_passwords.json.generated.
.PHONY: airflow
airflow: setup
	@mkdir -p .retrain/airflow
	@# the training pool (one slot) must exist before the scheduler will run cycle.train
	AIRFLOW_HOME=$(CURDIR)/.retrain/airflow $(BIN)/airflow db migrate >/dev/null && \
	AIRFLOW_HOME=$(CURDIR)/.retrain/airflow $(BIN)/python -m recsys_retrain.airflow_local >/dev/null
	AIRFLOW_HOME=$(CURDIR)/.retrain/airflow AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags \
	AIRFLOW__CORE__LOAD_EXAMPLES=False AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT=8080 \
	$(BIN)/airflow standalone
