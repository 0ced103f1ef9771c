/* SPDX-License-Identifier: MIT */
/*
 * The libFuzzer entry points of every fuzz binary: FUZZ_ENTRY names the
 * target in fuzz-targets.h (the Makefile builds fuzz-image-io with
 * -DFUZZ_ENTRY=qguard_fuzz_image_io, and so on).
 *
 * Copyright (c) 2026 The qguard authors
 */
#include "fuzz-targets.h"

#ifndef FUZZ_ENTRY
#error "build with -DFUZZ_ENTRY=qguard_fuzz_<target>"
#endif

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    qguard_fuzz_init();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return FUZZ_ENTRY(data, size);
}
