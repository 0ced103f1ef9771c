/* SPDX-License-Identifier: MIT */
/*
 * Fuzz entry points shared by the libFuzzer binaries (tests/fuzz/fuzz-*.c)
 * and the regression replayer (tests/unit/test-fuzz-regressions.c).
 *
 * Copyright (c) 2026 The qguard authors
 *
 * Each entry point takes arbitrary bytes, must never crash, hang or leak,
 * and abort()s when a property the library promises does not hold.
 */
#ifndef QGUARD_FUZZ_TARGETS_H
#define QGUARD_FUZZ_TARGETS_H

#include <stddef.h>
#include <stdint.h>

/*
 * Create the private work directory (on tmpfs when /dev/shm exists) and the
 * backing image "base.qcow2" that fuzzed images may name.  Idempotent.
 */
void qguard_fuzz_init(void);
/* Remove the work directory. */
void qguard_fuzz_cleanup(void);

/*
 * (a) @data is an image file: open read-only, open read-write with
 * QGUARD_OPEN_CHECK, check; then repair a copy ("check -r all") and check
 * that a repair which claims to have fixed everything leaves no corruption.
 */
int qguard_fuzz_image_check(const uint8_t *data, size_t size);

/*
 * (b) @data is an image file: open it read-write and run a fixed sequence
 * of reads, writes, zero writes, discards and flushes.  A write that
 * succeeded reads back; a zero write that succeeded reads as zeros.
 */
int qguard_fuzz_image_io(const uint8_t *data, size_t size);

/*
 * (c) @data is a stream of overlap-map operations, replayed against the map
 * and against a naive per-cluster model; every answer must agree.
 */
int qguard_fuzz_overlap_map(const uint8_t *data, size_t size);

#endif
