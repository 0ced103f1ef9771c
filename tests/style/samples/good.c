/* SPDX-License-Identifier: MIT */
/*
 * What tests/check-style must accept: the project's own idioms, and text
 * that only looks like a violation (in strings, comments, macros).
 */
#include <stdio.h>

#define REPEAT(n, body) do { for (int k_ = 0; k_ < (n); k_++) body; } while (0)

typedef struct GoodType GoodType;
typedef enum GoodKind { GOOD_A, GOOD_B } GoodKind;
typedef int GoodFunc(int x);
typedef void (*GoodCallback)(void *opaque);
typedef unsigned char GoodBytes16 __attribute__((vector_size(16)));

struct GoodType {
    int (*fn)(int);              /* if(this) for (int i = 0;;) // words */
};

static const char *url = "http://example.com/a//b if(x) for (int i";

static int good_name(int x, char c)
{
    int i, j;

    for (i = 0, j = 1; i < x; i++, j *= 2) {
        x -= j;
    }
    for (;;) {
        break;
    }
    if (x) {
        x++;
    } else if (c == '{' || c == '"') {
        x--;
    } else {
        x = 0;
    }
    do {
        x++;
    } while (x < 3);
    while (x < 5) {
        x++;
    }
    switch (x) {
    case 1:
        return url[0];
    default:
        break;
    }
    return x + i;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, unsigned long size);
int LLVMFuzzerTestOneInput(const unsigned char *data, unsigned long size)
{
    return good_name((int)size, data ? (char)data[0] : '}');
}
