# SPDX-License-Identifier: MIT
# Thin wrapper around meson; every target configures build/ when needed.

BUILD ?= build
ASAN_BUILD ?= build-asan
TSAN_BUILD ?= build-tsan

.PHONY: all asan tsan check check-style check-unit check-asan check-tsan check-iotests check-qemu-iotests bench bench-full bench-snapshots install clean

all: $(BUILD)/build.ninja
	ninja -C $(BUILD)

$(BUILD)/build.ninja:
	./configure --builddir=$(BUILD)

$(ASAN_BUILD)/build.ninja:
	./configure --builddir=$(ASAN_BUILD) --sanitize

asan: $(ASAN_BUILD)/build.ninja
	ninja -C $(ASAN_BUILD)

$(TSAN_BUILD)/build.ninja:
	./configure --builddir=$(TSAN_BUILD) --sanitize=thread

# ThreadSanitizer: only the tests that run requests in parallel.
TSAN_TESTS = tests/test-concurrency
tsan: $(TSAN_BUILD)/build.ninja
	ninja -C $(TSAN_BUILD) $(TSAN_TESTS)

# All tests; the last line is "N passed, N failed".
check: all asan tsan
	tests/run-all --build=$(BUILD) --asan-build=$(ASAN_BUILD) \
	    --tsan-build=$(TSAN_BUILD)

# The style rules of docs/style.md (tests/check-style); needs no build.
check-style:
	tests/run-all --only=style

check-unit: all
	tests/run-all --build=$(BUILD) --only=unit

check-tsan: tsan
	tests/run-all --build=$(BUILD) --tsan-build=$(TSAN_BUILD) --only=tsan

check-iotests: all
	tests/run-all --build=$(BUILD) --only=iotests

# QEMU 7.2's own qcow2 iotests with the tools as qemu-img / qemu-io drop-ins
# (docs/qemu-iotests.md); fetches Debian's qemu source once into $(BUILD).
check-qemu-iotests: all
	tests/run-all --build=$(BUILD) --only=qemu-iotests

# The 2014 overlap-check benchmarks beside QEMU 7.2 (docs/benchmarks.md).
# Default sizes are scaled down; bench-full (BENCH_FULL=1) runs the 2014 ones.
bench: all
	tests/bench/run --build=$(BUILD)

bench-full: all
	BENCH_FULL=1 tests/bench/run --build=$(BUILD)

# Open and per-write cost of overlap-check=all against cached with 100
# internal snapshots of a 16 GiB image (docs/snapshots.md); about 5 minutes.
bench-snapshots: all
	$(BUILD)/tests/bench-snapshot-open --dir /dev/shm

install: all
	meson install -C $(BUILD)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(TSAN_BUILD)

# libFuzzer targets (tests/fuzz, clang + ASan/UBSan): run each for
# FUZZ_SECONDS seconds; crash reproducers land in build-fuzz/artifacts/.
FUZZ_SECONDS ?= 300
.PHONY: fuzz check-slow
fuzz:
	tests/fuzz/run --seconds=$(FUZZ_SECONDS)

# Random steps through QEMU 7.2's tools and qguard's on two images made
# alike, compared after every step (tests/interop/differential.py); a few
# seconds per seed, so not part of check.  DIFF_OPTS: --mixed, --map.
DIFF_SEEDS ?= 0:100
DIFF_OPTS ?=
.PHONY: check-differential
check-differential: all
	tests/interop/differential.py --build=$(BUILD) --seeds=$(DIFF_SEEDS) \
	    $(DIFF_OPTS)

# Power-cut and I/O-error tests at every cut point and every N (slow).
check-slow: all
	QGUARD_TEST_SLOW=1 $(BUILD)/tests/test-powercut --tap
	QGUARD_TEST_SLOW=1 $(BUILD)/tests/test-ioerror --tap
