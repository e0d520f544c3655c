# The two commands of the README. Both set up what they need from nothing: .venv (Python 3.11) with the
# exact versions in constraints.txt, then the local runtimes (Prism, Apache Kafka, Beam's Flink job server and
# Java Kafka IO, the fake-gcs-server Cloud Storage emulator; python -m pipelines.artifacts), fetched once;
# nothing else needs to be running.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-extended soak

$(VENV)/.installed: setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[train,gcp,report,test]'
	touch $@

$(VENV)/.runtimes: $(VENV)/.installed pipelines/artifacts.py
	$(PY) -m pipelines.artifacts
	touch $@

demo: $(VENV)/.runtimes
	$(PY) -m pipelines.demo

# The report's tests open it in Debian's chromium (as root, installed when missing).
$(VENV)/.browser: $(VENV)/.installed
	command -v chromium >/dev/null || apt-get install -y --no-install-recommends chromium \
		|| (apt-get update && apt-get install -y --no-install-recommends chromium)
	touch $@

# Two workers (pytest-xdist), one per core, each taking the next test as it finishes one, but the tests of a module
# that starts a costly service (the Flink session cluster, the Schema Registry, the secure broker) on one worker
# (tests/conftest.py, ONE_WORKER_MODULES); then the live acceptance tests (streams on each runner, timing-sensitive)
# apart from the busy first part, two at a time.
# The extended tests (further runs on Flink and the Flink cluster, of paths make test covers) are left out for
# time: make test-extended. Each part ends with its 15 slowest tests, for the suite's time.
test: $(VENV)/.runtimes $(VENV)/.browser
	$(PY) -m pytest -n 2 --dist load --durations=15 -m "not acceptance and not extended"
	$(PY) -m pytest -n 2 --dist load --durations=15 -m "acceptance and not extended"

test-extended: $(VENV)/.runtimes
	$(PY) -m pytest -m extended

# A stream as a service (benchmarks/soak.py): fraud_entity with monitoring and hot reload on Prism and on Flink,
# fraud on the DirectRunner, SOAK_MINUTES each at SOAK_RATE events/s, with a broker restart, a new model version
# and a SIGKILL of the scorer during each run. Not part of make test.
SOAK_MINUTES ?= 30
SOAK_RATE ?= 200
soak: $(VENV)/.runtimes
	$(PY) benchmarks/soak.py --runner PrismRunner --spec fraud_entity --minutes $(SOAK_MINUTES) --rate $(SOAK_RATE)
	$(PY) benchmarks/soak.py --runner FlinkRunner --spec fraud_entity --minutes $(SOAK_MINUTES) --rate $(SOAK_RATE)
	$(PY) benchmarks/soak.py --runner DirectRunner --spec fraud --no_monitoring --minutes $(SOAK_MINUTES) --rate $(SOAK_RATE)
