/* SPDX-License-Identifier: MIT */
/*
 * qguard_strtosz(), the one size parser of the library and both tools,
 * against what qemu-img 7.2 makes of the same strings ("qemu-img create
 * -f raw x.img SIZE" prints the value it read; the expectations below
 * were taken from it).
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "qguard.h"

typedef struct SizeCase {
    const char *str;
    int ret;                /* 0, -EINVAL or -ERANGE */
    uint64_t value;         /* with ret == 0 */
    bool hex_suffix;        /* QEMU prints its deprecation warning */
} SizeCase;

#define OK(s, v)        { .str = s, .value = v }
#define BAD(s)          { .str = s, .ret = -EINVAL }
#define BIG(s)          { .str = s, .ret = -ERANGE }
#define HEX(s, r, v)    { .str = s, .ret = r, .value = v, .hex_suffix = true }

static const SizeCase cases[] = {
    OK("0", 0),
    OK("1", 1),
    OK("1k", 1024),
    OK("1K", 1024),
    OK("1b", 1),
    OK("1B", 1),
    OK("12M", 12 << 20),
    OK("1G", 1ULL << 30),
    OK("1T", 1ULL << 40),
    OK("1P", 1ULL << 50),
    OK("1E", 1ULL << 60),
    OK("15E", 15ULL << 60),
    OK("010", 10),               /* decimal, not octal */
    OK("08", 8),
    OK(" 12", 12),               /* leading white space */
    OK("+1", 1),
    OK("+1k", 1024),
    OK("18446744073709551615", UINT64_MAX),
    /* Fractions need a suffix other than b; halves round up. */
    OK("0.5k", 512),
    OK("1.5k", 1536),
    OK("4.5M", 4718592),
    OK("0.1k", 102),
    OK("12345.6789k", 12641975),
    OK("1.0", 1),
    OK("1.0b", 1),
    OK("1.00k", 1024),
    OK("1.", 1),
    OK("1.k", 1024),
    OK("1.e", 1ULL << 60),       /* "1." then the suffix e */
    OK("1.5e", 3ULL << 59),
    OK("0.9999999999999999k", 1024),
    /* QEMU 7.2 on x86-64: a fraction that rounds to 1.0 counts as 0. */
    OK("0.99999999999999999999k", 0),
    OK("1.99999999999999999999k", 1024),
    OK("7.99999999999999999999E", 7ULL << 60),
    /* Hex: no fraction; a suffix works but is deprecated. */
    OK("0x10", 16),
    OK("0X10", 16),
    OK("+0x10", 16),
    HEX("0x10k", 0, 16384),
    HEX("0x1g", 0, 1ULL << 30),
    HEX("0x1p3", -EINVAL, 0),
    HEX("0xffffffffffffffffk", -ERANGE, 0),
    BIG("0x10000000000000000"),
    BAD("0x1.5k"),
    BAD("0x"),
    BAD("0xg"),
    BAD("00x10"),
    /* Refused. */
    BAD(""),
    BAD("."),
    BAD(".5k"),             /* qguard accepted this before */
    BAD(".5"),
    BAD("k"),
    BAD("0.5"),
    BAD("1.5"),
    BAD("1.5b"),
    BAD("0.1b"),
    BAD("1e3"),
    BAD("1e3k"),
    BAD("1.5e3k"),
    BAD("1.0e5k"),
    BAD("1.5eb"),
    BAD("1.5.5k"),
    BAD("1.-5k"),
    BAD("1. 5k"),
    BAD("-1"),
    BAD("-0"),
    BAD("+-1"),
    BAD("1k2"),
    BAD("1kk"),
    BAD("1kb"),
    BAD("1Q"),
    BAD("abc"),
    BAD("inf"),
    BAD("nan"),
    BAD("12 "),
    BAD("1 k"),
    /* Too large; with something after the digits it is a syntax error. */
    BIG("16E"),
    BIG("18446744073709551616"),
    BIG("99999999999999999999999"),
    BAD("99999999999999999999k"),
};

static void test_case(gconstpointer data)
{
    const SizeCase *c = data;
    uint64_t value = 0xdeadbeef;
    bool hex_suffix = !c->hex_suffix;
    int ret = qguard_strtosz(c->str, &value, &hex_suffix);

    g_assert_cmpint(ret, ==, c->ret);
    if (ret == 0) {
        g_assert_cmpuint(value, ==, c->value);
    } else {
        g_assert_cmpuint(value, ==, 0xdeadbeef);
    }
    g_assert_cmpint(hex_suffix, ==, c->hex_suffix);
}

/*
 * An underflowing fraction counts for nothing and QEMU steps over the
 * character after it, so the suffix is lost.
 */
static void test_underflow(void)
{
    g_autofree char *zeros = g_strnfill(400, '0');
    g_autofree char *str = g_strdup_printf("1.%s1k", zeros);
    uint64_t value;

    g_assert_cmpint(qguard_strtosz(str, &value, NULL), ==, 0);
    g_assert_cmpuint(value, ==, 1);
}

/* The messages callers show: generic, and QemuOpts' for an option. */
static void test_messages(void)
{
    g_autoptr(GError) err = NULL;
    uint64_t value;

    g_assert_cmpint(qguard_parse_size(".5k", &value, &err), <, 0);
    g_assert_cmpstr(err->message, ==, "Invalid size '.5k'");
    g_clear_error(&err);
    g_assert_cmpint(qguard_parse_size("16E", &value, &err), <, 0);
    g_assert_cmpint(err->code, ==, ERANGE);
    g_clear_error(&err);

    g_assert_cmpint(qguard_parse_size_option("size", "16E", &value, NULL,
                                            &err), <, 0);
    g_assert_cmpstr(err->message, ==,
                    "Value '16E' is out of range for parameter 'size'");
    g_clear_error(&err);
    g_assert_cmpint(qguard_parse_size_option("size", "1.5", &value, NULL,
                                            &err), <, 0);
    g_assert_cmpstr(err->message, ==,
                    "Parameter 'size' expects a non-negative number below "
                    "2^64\nOptional suffix k, M, G, T, P or E means kilo-, "
                    "mega-, giga-, tera-, peta-\nand exabytes, "
                    "respectively.\n");
}

int main(int argc, char **argv)
{
    size_t i;

    g_test_init(&argc, &argv, NULL);
    for (i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autofree char *name = g_strdup_printf("/size-parse/form/[%s]",
                                                cases[i].str);

        g_test_add_data_func(name, &cases[i], test_case);
    }
    g_test_add_func("/size-parse/underflow", test_underflow);
    g_test_add_func("/size-parse/messages", test_messages);
    return g_test_run();
}
