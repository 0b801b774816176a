# Thin wrapper: every target installs what is missing, configures with CMake
# out of tree, builds, then runs. build/debug is the ASan+UBSan build the
# tests run on; build/release is what the demo and the benchmarks run.
JOBS ?= $(shell nproc)
# cmake drives its own make; keep the outer make's flags out of it.
BUILD = env -u MAKEFLAGS -u MAKELEVEL -u MFLAGS cmake --build

# Warnings are errors here and in CI (.ci/run runs `make test`); a plain
# `cmake` build leaves ESIM_WERROR off for packagers.
CONFIGURE = cmake -S . -DESIM_WERROR=ON

.PHONY: all deps debug release release-tests test fuzz demo bench clean format

all: release

deps:
	@./scripts/install-deps.sh

debug: deps
	@$(CONFIGURE) -B build/debug -DCMAKE_BUILD_TYPE=Debug -DESIM_SANITIZE=ON >/dev/null
	@$(BUILD) build/debug -j $(JOBS)

release: deps
	@$(CONFIGURE) -B build/release -DCMAKE_BUILD_TYPE=Release -DESIM_TESTS=OFF >/dev/null
	@$(BUILD) build/release -j $(JOBS)

# The release configuration with the tests compiled too (they run in
# build/debug): gcc warns about some things only when it optimizes, so this
# catches a warning in a test before a packager's Release build meets it.
release-tests: deps
	@$(CONFIGURE) -B build/release -DCMAKE_BUILD_TYPE=Release -DESIM_TESTS=ON >/dev/null
	@$(BUILD) build/release -j $(JOBS)

# The short fuzz runs come first: the output ends with ctest's summary line.
test: debug release-tests
	@./scripts/fuzz.sh $(FUZZ_SHORT_SECONDS)
	@cd build/debug && ctest --output-on-failure -j $(JOBS) --timeout 300

# Fuzzing (clang, libFuzzer; scripts/fuzz.sh): `make test` runs each target
# for FUZZ_SHORT_SECONDS from its committed corpus, `make fuzz` for
# FUZZ_SECONDS (findings in build/fuzz/findings/).
FUZZ_SHORT_SECONDS ?= 5
FUZZ_SECONDS ?= 600
fuzz: deps
	@./scripts/fuzz.sh $(FUZZ_SECONDS)

demo: release
	@./build/release/cli/esim-mdm demo $(DEMO_ARGS)

bench: release
	@./bench/run.sh build/release

format:
	@clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	@rm -rf build
