# Benchmarks (bench/README.md). Run as root from the repository root:
#   make bench         the full run: every server and workload, ~10 s a row (about 8 minutes on 2 CPUs)
#   make bench-quick   a few seconds a row, fewer rows (what tests/test_bench.py runs)
#   make bench-scaling 1, 2, 4 ... workers (needs 4 CPUs or more)
#   make bench-loss    8 MiB bulk transfers under loss and on a 40 ms / 100 Mb/s path, core and Linux
#   make bench-lossy-web  short-connection latency at 40 ms RTT and 2% loss, mtcp and nginx
# BENCH_ARGS passes more options: make bench BENCH_ARGS="--repeat 2 --server-cpu 2 --client-cpu 3"
# Each target first installs what is missing (Debian packages: wrk, nginx-light, lighttpd, ...;
# the project into .venv) through scripts/lib.sh.

SHELL := /bin/bash
VENV_PY := .venv/bin/python
BENCH_ARGS ?=

.PHONY: bench bench-quick bench-scaling bench-loss bench-lossy-web bench-setup bench-exhaust bench-exhaust-quick

bench-setup:
	source scripts/lib.sh && setup_system && setup_venv .venv

bench: bench-setup
	$(VENV_PY) bench/web_bench.py $(BENCH_ARGS)

bench-quick: bench-setup
	$(VENV_PY) bench/web_bench.py --quick $(BENCH_ARGS)

bench-scaling: bench-setup
	$(VENV_PY) bench/web_bench.py --scaling only $(BENCH_ARGS)

bench-loss: bench-setup
	$(VENV_PY) bench/loss_bench.py $(BENCH_ARGS)

bench-lossy-web: bench-setup
	$(VENV_PY) bench/lossy_web_bench.py $(BENCH_ARGS)

# Exhaustion benchmark (issue 15): attacks against the appliance and nginx (~30 min; quick: ~2 min)
bench-exhaust: bench-setup
	$(VENV_PY) bench/exhaust_bench.py $(BENCH_ARGS)

bench-exhaust-quick: bench-setup
	$(VENV_PY) bench/exhaust_bench.py --quick $(BENCH_ARGS)
