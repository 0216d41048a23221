# Target: user-space deduplicating block storage controller.
#   make build       build the solution (Release) and publish a runnable bin/target
#   make run         serve vol0 (10 GiB) from ./data over NBD 127.0.0.1:10809 and iSCSI 127.0.0.1:3260, admin on 127.0.0.1:9810
#   make test        install missing test tools, build, run every test
#   make crash-test  the crash tests only, with many more iterations
#   make bench       side-by-side benchmarks (tools/bench/compare.sh)
#   make clean

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

DOTNET        ?= dotnet
CONFIGURATION ?= Release

# make run settings (override on the command line: make run VOLUME=vol0:20G)
POOL      ?= ./data
POOL_SIZE ?= 4G
VOLUME    ?= vol0:10G
NBD       ?= 127.0.0.1:10809
ISCSI     ?= 127.0.0.1:3260
ADMIN     ?= 127.0.0.1:9810
WRITE_MODE ?= 1way-wb

# make test FILTER='Category!=Interop' runs a subset; a hung test is killed after HANG_TIMEOUT.
FILTER           ?=
HANG_TIMEOUT     ?= 20m
CRASH_ITERATIONS ?= 500

export DOTNET_CLI_TELEMETRY_OPTOUT := 1
export DOTNET_NOLOGO := 1
export DOTNET_SKIP_FIRST_TIME_EXPERIENCE := 1

TEST_ARGS = Target.Tests -c $(CONFIGURATION) --no-build \
	--logger "console;verbosity=normal" \
	--blame-hang-timeout $(HANG_TIMEOUT) --blame-hang-dump-type none

# The failed tests (name and the first line of the error, so a CI log's tail names them), then one closing
# line from dotnet test's summary: "Total tests: N / Passed: N / Failed: N / Skipped: N"
# (normal verbosity) or "Passed!/Failed! - Failed: N, Passed: N, Skipped: N" (minimal verbosity).
SUMMARY = awk ' \
	/^ *Total tests: *[0-9]+ *$$/ { a = 1 } \
	/^ *Passed: *[0-9]+ *$$/ { ap += $$2 } \
	/^ *Failed: *[0-9]+ *$$/ { af += $$2 } \
	/^ *Skipped: *[0-9]+ *$$/ { as += $$2 } \
	/(Passed|Failed)! +- +Failed: +[0-9]+, +Passed: +[0-9]+/ { b = 1; gsub(",", ""); \
		for (i = 1; i < NF; i++) { if ($$i == "Failed:") bf += $$(i+1); if ($$i == "Passed:") bp += $$(i+1); if ($$i == "Skipped:") bs += $$(i+1) } } \
	m && nf { sub(/^ +/, ""); why[nf] = substr($$0, 1, 300); m = 0 } \
	/^ *Failed [A-Za-z_][A-Za-z0-9_.]*[ (]/ { failed[++nf] = $$0 } \
	/^ *Error Message: *$$/ { m = 1 } \
	END { for (i = 1; i <= nf; i++) print "failed test:" failed[i] (why[i] != "" ? "\n  " why[i] : ""); \
		if (a) printf "tests: %d passed, %d failed, %d skipped\n", ap, af, as; \
		else if (b) printf "tests: %d passed, %d failed, %d skipped\n", bp, bf, bs; \
		else print "tests: dotnet test printed no summary" }'

.PHONY: all build run test crash-test bench deps clean

all: build

deps:
	bash tools/install-deps.sh

build:
	$(DOTNET) build Target.sln -c $(CONFIGURATION)
	$(DOTNET) publish Target/Target.csproj -c $(CONFIGURATION) -o bin -p:IsTransformWebConfigDisabled=true
	@test -x bin/target
	@echo "make build: bin/target is ready (bin/target --help)"

run: build
	bin/target serve --pool $(POOL) --pool-size $(POOL_SIZE) --volume $(VOLUME) \
		--nbd $(NBD) --iscsi $(ISCSI) --admin $(ADMIN) --write-mode $(WRITE_MODE)

test: deps build
	log=$$(mktemp /tmp/target-test-XXXXXX.log); \
	status=0; \
	$(DOTNET) test $(TEST_ARGS) $(if $(FILTER),--filter "$(FILTER)") 2>&1 | tee "$$log" || status=$$?; \
	$(SUMMARY) "$$log"; \
	rm -f "$$log"; \
	exit $$status

crash-test: deps build
	log=$$(mktemp /tmp/target-test-XXXXXX.log); \
	status=0; \
	TARGET_CRASH_ITERATIONS=$(CRASH_ITERATIONS) $(DOTNET) test $(TEST_ARGS) --filter "Category=Crash" 2>&1 | tee "$$log" || status=$$?; \
	$(SUMMARY) "$$log"; \
	rm -f "$$log"; \
	exit $$status

bench: deps build
	@if [ -f tools/bench/compare.sh ]; then \
		bash tools/bench/compare.sh; \
	else \
		echo "make bench: tools/bench/compare.sh is not there yet."; \
		echo "BenchmarkDotNet micro-benchmarks: $(DOTNET) run -c Release --project Target.Bench -- --filter '*'"; \
	fi

clean:
	-$(DOTNET) clean Target.sln -c $(CONFIGURATION) >/dev/null
	rm -rf bin artifacts */bin */obj TestResults */TestResults
