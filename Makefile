# Thin wrapper: every target installs what is missing, configures with CMake
# out of tree, builds, then runs. build/debug is the ASan+UBSan build the
# tests run on; build/release is what the demo and the benchmarks run.
JOBS ?= $(shell nproc)
# cmake drives its own make; keep the outer make's flags out of it.
BUILD = env -u MAKEFLAGS -u MAKELEVEL -u MFLAGS cmake --build

.PHONY: all deps debug release test demo bench clean format

all: release

deps:
	@./scripts/install-deps.sh

debug: deps
	@cmake -S . -B build/debug -DCMAKE_BUILD_TYPE=Debug -DESIM_SANITIZE=ON >/dev/null
	@$(BUILD) build/debug -j $(JOBS)

release: deps
	@cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DESIM_TESTS=OFF >/dev/null
	@$(BUILD) build/release -j $(JOBS)

# The release build too: gcc warns about some things only at -O2, and a
# warning there would break `make demo`.
test: debug release
	@cd build/debug && ctest --output-on-failure -j $(JOBS) --timeout 300

demo: release
	@./build/release/cli/esim-mdm demo $(DEMO_ARGS)

bench: release
	@./bench/run.sh build/release

format:
	@clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	@rm -rf build
