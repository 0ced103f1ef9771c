/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: see qguard_fuzz_image_check() in fuzz-targets.h.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include "fuzz-targets.h"

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
    return qguard_fuzz_image_check(data, size);
}
