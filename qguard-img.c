/* SPDX-License-Identifier: MIT */
/*
 * qguard-img: a command-line twin of qemu-img (7.2) for qcow2 and raw.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * Scripts written for qemu-img must work unchanged, so every command keeps
 * qemu-img's syntax, its stdout/stderr text and its exit codes; messages
 * carry the name the program was run as, so that through a symlink named
 * qemu-img they read exactly as qemu-img's.  Where qemu-img's behaviour
 * depends on its buffering (stdout is fully buffered when redirected,
 * stderr is not), we rely on the same stdio defaults and flush only where
 * qemu-img flushes, so that interleaved output comes out in the same order.
 *
 * This file holds the command table (qemu-img-cmds.hx in QEMU), the help
 * generated from it and main(); each command lives in tools/img/<cmd>.c
 * (tools/img/img.h says how to add one).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "img.h"

typedef struct ImgCmd {
    const char *name;
    int (*handler)(int argc, char **argv);
    /* As --help shows it: continuation lines indented under the name. */
    const char *usage;
} ImgCmd;

/* Sorted by name: --help lists them in this order. */
static const ImgCmd img_cmds[] = {
    { "amend", img_amend,
      "amend [--object objectdef] [--image-opts] [-p] [-q] [-f fmt] "
      "[-t cache]\n"
      "      [--force] -o options filename" },
    { "bench", img_bench,
      "bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval]\n"
      "      [-i aio] [-n] [--no-drain] [-o offset] [--pattern=pattern] [-q]\n"
      "      [-s buffer_size] [-S step_size] [-t cache] [-w] "
      "[--random[=seed]]\n"
      "      [--image-opts] [-U] filename" },
    { "bitmap", img_bitmap,
      "bitmap (--merge SOURCE | --add | --remove | --clear | --enable |\n"
      "      --disable)... [-b source_file [-F source_fmt]] [-g granularity]\n"
      "      [--object objectdef] [--image-opts | -f fmt] filename bitmap" },
    { "check", img_check,
      "check [--object objectdef] [--image-opts] [-q] [-f fmt]\n"
      "      [--output=ofmt] [-r [leaks | all]] [-T src_cache] [-U] filename" },
    { "commit", img_commit,
      "commit [--object objectdef] [--image-opts] [-q] [-f fmt] [-t cache]\n"
      "      [-b base] [-r rate_limit] [-d] [-p] filename" },
    { "compare", img_compare,
      "compare [--object objectdef] [--image-opts] [-f fmt] [-F fmt]\n"
      "      [-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2" },
    { "convert", img_convert,
      "convert [--object objectdef] [--image-opts] [--target-image-opts]\n"
      "      [--target-is-zero] [--bitmaps [--skip-broken-bitmaps]] [-U] [-C]\n"
      "      [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache]\n"
      "      [-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options]\n"
      "      [-l snapshot_param] [-S sparse_size] [-r rate_limit]\n"
      "      [-m num_coroutines] [-W] [--salvage] filename [filename2 [...]]\n"
      "      output_filename" },
    { "create", img_create,
      "create [--object objectdef] [-q] [-f fmt]\n"
      "      [-b backing_file [-F backing_fmt]] [-u] [-o options] filename\n"
      "      [size]" },
    { "dd", img_dd,
      "dd [--image-opts] [-U] [-f fmt] [-O output_fmt] [bs=block_size]\n"
      "      [count=blocks] [skip=blocks] if=input of=output" },
    { "info", img_info,
      "info [--object objectdef] [--image-opts] [-f fmt] [--output=ofmt]\n"
      "      [--backing-chain] [-U] filename" },
    { "map", img_map,
      "map [--object objectdef] [--image-opts] [-f fmt]\n"
      "      [--start-offset=offset] [--max-length=len] [--output=ofmt] [-U]\n"
      "      filename" },
    { "measure", img_measure,
      "measure [--output=ofmt] [-O output_fmt] [-o options] [--size N |\n"
      "      [--object objectdef] [--image-opts] [-f fmt] "
      "[-l snapshot_param]\n"
      "      filename]" },
    { "rebase", img_rebase,
      "rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt] "
      "[-t cache]\n"
      "      [-T src_cache] [-p] [-u] -b backing_file [-F backing_fmt] "
      "filename" },
    { "resize", img_resize,
      "resize [--object objectdef] [--image-opts] [-f fmt]\n"
      "      [--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size" },
    { "snapshot", img_snapshot,
      "snapshot [--object objectdef] [--image-opts] [-U] [-q]\n"
      "      [-l | -a snapshot | -c snapshot | -d snapshot] filename" },
};

/* What the table cannot say: the meaning of the arguments. */
static const char help_arguments[] =
    "Arguments:\n"
    "  'fmt' is 'qcow2' or 'raw'; it is probed when not given.\n"
    "  'size' and the other byte counts take the suffixes k, M, G, T, P and E\n"
    "    (powers of 1024); 'b' means bytes.\n"
    "  'options' is a comma-separated list of name=value pairs; '-o "
    "help' lists\n"
    "    the creation options of a format.  qcow2 runtime options such as\n"
    "    overlap-check=all are accepted there too.\n"
    "  --image-opts: 'filename' is an option string such as\n"
    "    driver=qcow2,file.filename=disk.qcow2,overlap-check=all\n"
    "  'ofmt' is 'human' or 'json'.\n"
    "  'cache' is the cache mode: 'none', 'writeback' (default, except for\n"
    "    convert), 'writethrough', 'directsync' and 'unsafe' (default for\n"
    "    convert), as in qemu-img.\n"
    "  -q prints nothing but errors; -p shows progress (amend, commit, "
    "compare,\n"
    "    convert, rebase).\n"
    "  bitmap runs its actions in the order given on one bitmap; -g sets the\n"
    "    granularity for --add, -b and -F name the image --merge reads from.\n"
    "  convert --bitmaps copies the persistent bitmaps of a single source.\n"
    "  check -r leaks repairs leaked clusters only, -r all repairs "
    "every kind of\n"
    "    error (with a higher risk of choosing the wrong fix).\n"
    "  convert -S sets the run of zero bytes (default 4k) that stays "
    "unallocated\n"
    "    in the target; 0 allocates everything.  -n writes into an existing\n"
    "    target (--target-image-opts: an option string; --target-is-zero:\n"
    "    it reads as zeros, so zeros are not written).  -r limits the data\n"
    "    written by commit and convert to rate_limit bytes per second.\n"
    "  bench issues its requests one at a time: the depth (-d) is "
    "accepted and\n"
    "    printed but does not make requests overlap.  --random[=seed] uses\n"
    "    uniformly random buffer-aligned offsets, the same ones for the same\n"
    "    seed.  Unless -q, overlap-protection statistics follow the run.\n"
    "\n"
    "Exit status: 0 on success, 1 on error; check also returns 2 "
    "(corruptions),\n"
    "3 (leaked clusters only) and 63 (format without checks).\n";

/* Each usage line of the table, indented by two spaces. */
static void print_usage(const char *usage)
{
    g_auto(GStrv) lines = g_strsplit(usage, "\n", -1);
    guint i;

    for (i = 0; lines[i]; i++) {
        printf("  %s\n", lines[i]);
    }
}

static void help(void)
{
    size_t i;

    printf("%s version " QGUARD_VERSION "\n"
           "usage: %s [-h | --help | -V | --version] command "
           "[command options]\n"
           "Inspect, create and modify qcow2 and raw disk images "
           "(qemu-img compatible).\n"
           "\n"
           "Commands:\n", tool_name, tool_name);
    for (i = 0; i < G_N_ELEMENTS(img_cmds); i++) {
        print_usage(img_cmds[i].usage);
    }
    printf("\n%s", help_arguments);
}

/* Deep backing chains keep one descriptor open per image. */
static void raise_fd_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int main(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { "trace", required_argument, NULL, 'T' },
        { NULL, 0, NULL, 0 }
    };
    const char *cmdname;
    size_t i;
    int c;

    tool_init(argv, help);
    raise_fd_limit();

    if (argc < 2) {
        error_exit("Not enough arguments");
    }
    /* '+': the options before the command are the program's own. */
    while ((c = tool_getopt(argc, argv, "+:hVT:", long_options,
                            NULL)) != -1) {
        switch (c) {
        case 'V':
            printf("%s version " QGUARD_VERSION "\n"
                   "Copyright (c) 2026 The qguard authors\n", tool_name);
            return 0;
        case 'T':
            tool_trace_option(optarg);
            break;
        }
    }
    if (optind >= argc) {
        error_exit("Not enough arguments");
    }
    cmdname = argv[optind];
    argc -= optind;
    argv += optind;
    /* Zero makes glibc's getopt start over for the command's options. */
    optind = 0;

    for (i = 0; i < G_N_ELEMENTS(img_cmds); i++) {
        if (!strcmp(cmdname, img_cmds[i].name)) {
            return img_cmds[i].handler(argc, argv);
        }
    }
    error_exit("Command not found: %s", cmdname);
}
