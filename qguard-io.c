/* SPDX-License-Identifier: MIT */
/*
 * qguard-io: exercise the I/O path of libqguard the way qemu-io 7.2 does.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * Scripts written for qemu-io must run unchanged, so the command syntax,
 * every report line, the split between stdout and stderr and the exit
 * status follow qemu-io 7.2; messages carry the name the program was run
 * as.  Failures of a command go to stdout and make the exit status 1 (like
 * qemu-io); usage problems detected before a command runs and open errors
 * go to stderr.
 *
 * This file holds the command table, the command loop and main(); the
 * commands live in tools/io/ by family (tools/io/io.h says how to add one).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io.h"

#define MAX_INPUT_LINE      1024

static bool quit_requested;

static const Command *find_command(const char *name);

static int quit_f(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    quit_requested = true;
    return 0;
}

static const Command quit_cmd = {
    .name = "quit", .altname = "q", .func = quit_f,
    .argmin = -1, .argmax = -1, .flags = CMD_NOFILE_OK,
    .oneline = "exit the program",
};

static int help_f(int argc, char **argv);

static const Command help_cmd = {
    .name = "help", .altname = "?", .func = help_f,
    .argmin = 0, .argmax = 1, .flags = CMD_NOFILE_OK,
    .args = "[command]",
    .oneline = "help for one or all commands",
};

/* Sorted by name: "help" lists them in this order. */
static const Command *const commands[] = {
    &abort_cmd, &aio_flush_cmd, &aio_read_cmd, &aio_write_cmd, &alloc_cmd,
    &break_cmd, &close_cmd, &discard_cmd, &flush_cmd, &help_cmd, &info_cmd,
    &length_cmd, &map_cmd, &open_cmd, &overlap_stats_cmd,
    &overlap_stats_reset_cmd, &quit_cmd, &read_cmd, &readv_cmd,
    &remove_break_cmd, &reopen_cmd, &resume_cmd, &sigraise_cmd, &sleep_cmd,
    &snapshot_apply_cmd, &snapshot_create_cmd, &snapshot_delete_cmd,
    &snapshot_list_cmd, &truncate_cmd, &wait_break_cmd, &write_cmd,
    &writev_cmd,
};

static void help_oneline(const char *name, const Command *ct)
{
    printf("%s ", name);
    if (ct->args) {
        printf("%s ", ct->args);
    }
    printf("-- %s\n", ct->oneline);
}

static int help_f(int argc, char **argv)
{
    const Command *ct;
    size_t i;

    if (argc == 1) {
        for (i = 0; i < G_N_ELEMENTS(commands); i++) {
            help_oneline(commands[i]->name, commands[i]);
        }
        printf("\nUse 'help commandname' for extended help.\n");
        return 0;
    }
    ct = find_command(argv[1]);
    if (!ct) {
        printf("command %s not found\n", argv[1]);
        return -EINVAL;
    }
    help_oneline(argv[1], ct);
    if (ct->help) {
        fputs(ct->help, stdout);
    }
    return 0;
}

static const Command *find_command(const char *name)
{
    size_t i;

    for (i = 0; i < G_N_ELEMENTS(commands); i++) {
        const Command *ct = commands[i];

        if (!strcmp(ct->name, name) ||
            (ct->altname && !strcmp(ct->altname, name))) {
            return ct;
        }
    }
    return NULL;
}

static int run_command(const Command *ct, int argc, char **argv)
{
    int nargs = argc - 1;

    if (!(ct->flags & CMD_NOFILE_OK) && !image) {
        fprintf(stderr, "no file open, try 'help open'\n");
        return -EINVAL;
    }
    if (nargs < ct->argmin || (ct->argmax != -1 && nargs > ct->argmax)) {
        if (ct->argmax == -1) {
            fprintf(stderr, "bad argument count %d to %s, expected at least "
                    "%d arguments\n", nargs, argv[0], ct->argmin);
        } else if (ct->argmin == ct->argmax) {
            fprintf(stderr, "bad argument count %d to %s, expected %d "
                    "arguments\n", nargs, argv[0], ct->argmin);
        } else {
            fprintf(stderr, "bad argument count %d to %s, expected between "
                    "%d and %d arguments\n", nargs, argv[0], ct->argmin,
                    ct->argmax);
        }
        return -EINVAL;
    }
    if ((ct->flags & CMD_WRITE) && qguard_image_is_read_only(image)) {
        error_report("Block node is read-only");
        return -EPERM;
    }
    /* 0 makes glibc's getopt start over, as for a fresh argv. */
    optind = 0;
    return ct->func(argc, argv);
}

/* Splits at single spaces, as qemu-io does (tabs stay in the words). */
static int execute_line(const char *line)
{
    g_autofree char *input = g_strdup(line);
    g_autoptr(GPtrArray) words = g_ptr_array_new();
    const Command *ct;
    char *p = input, *word;

    while ((word = strsep(&p, " ")) != NULL) {
        if (*word) {
            g_ptr_array_add(words, word);
        }
    }
    if (words->len == 0) {
        return 0;
    }
    g_ptr_array_add(words, NULL);
    ct = find_command(g_ptr_array_index(words, 0));
    if (!ct) {
        fprintf(stderr, "command \"%s\" not found\n",
                (char *)g_ptr_array_index(words, 0));
        return -EINVAL;
    }
    return run_command(ct, words->len - 1, (char **)words->pdata);
}

static void usage(void)
{
    printf(
"Usage: %s [OPTIONS]... [-c STRING]... [file]\n"
"Exercise the I/O path of libqguard on a qcow2 or raw image (qemu-io 7.2\n"
"compatible).\n"
"\n"
"  --object OBJECTDEF   checked as qemu-io checks it, then unused: objects\n"
"                       hold secrets and credentials libqguard does not use\n"
"  --image-opts         the file argument is an option string\n"
"                       (driver=qcow2,file.filename=...)\n"
"  -c, --cmd STRING     run the command STRING; may be repeated, and\n"
"                       without it commands are read from standard input\n"
"  -f, --format FMT     the image format (qcow2 or raw; default: probe)\n"
"  -r, --read-only      open the image read-only\n"
"  -s, --snapshot       write to a temporary overlay dropped at exit\n"
"  -n, --nocache        bypass the host page cache, like -t none\n"
"  -C, --copy-on-read   copy-on-read (not supported by libqguard)\n"
"  -m, --misalign       accepted for compatibility\n"
"  -k, --native-aio     accepted for compatibility (needs -n)\n"
"  -i, --aio=MODE       threads, native or io_uring; accepted for\n"
"                       compatibility\n"
"  -t, --cache=MODE     none, off, writeback, unsafe, directsync or\n"
"                       writethrough (the default: a write is on disk\n"
"                       when it is reported)\n"
"  -d, --discard=MODE   ignore, off, unmap or on\n"
"  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]\n"
"                       accepted; libqguard has no trace events to enable\n"
"  -U, --force-share    force shared permissions (needs -r)\n"
"  -h, --help           print this help and exit\n"
"  -V, --version        print the version and exit\n"
"\n"
"See '%s -c help' for the commands.\n",
    tool_name, tool_name);
}

enum {
    OPTION_OBJECT = 256,
    OPTION_IMAGE_OPTS = 257,
};

static char *prompt(void)
{
    static char text[64];

    if (!text[0]) {
        snprintf(text, sizeof(text), "%s> ", tool_name);
    }
    return text;
}

static char *fetch_line(void)
{
    char *line = g_malloc(MAX_INPUT_LINE);
    size_t len;

    if (!fgets(line, MAX_INPUT_LINE, stdin)) {
        g_free(line);
        return NULL;
    }
    len = strlen(line);
    if (len && line[len - 1] == '\n') {
        line[len - 1] = '\0';
    }
    return line;
}

static int command_loop(char **cmdline, int ncmdline)
{
    int i, ret, last_error = 0;

    for (i = 0; !quit_requested && i < ncmdline; i++) {
        ret = execute_line(cmdline[i]);
        if (ret < 0) {
            last_error = ret;
        }
    }
    if (ncmdline) {
        return last_error;
    }
    while (!quit_requested) {
        char *line;

        printf("%s", prompt());
        fflush(stdout);
        line = fetch_line();
        if (!line) {
            if (isatty(STDIN_FILENO)) {
                /* End the prompt line when the user types Ctrl-D. */
                printf("\n");
            }
            break;
        }
        ret = execute_line(line);
        g_free(line);
        if (ret < 0) {
            last_error = ret;
        }
    }
    return last_error;
}

/* The file named on the command line (an option string with --image-opts). */
static int open_file_arg(const char *arg, const char *format,
                         const OpenParams *p)
{
    QGuardOpts *opts;

    if (!image_opts_mode) {
        return open_image(arg, format, NULL, p);
    }
    opts = qguard_opts_new();
    if (!parse_open_options(opts, arg)) {
        qguard_opts_free(opts);
        return -EINVAL;
    }
    return open_image(NULL, NULL, opts, p);
}

int main(int argc, char **argv)
{
    static const struct option lopt[] = {
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { "cmd", required_argument, NULL, 'c' },
        { "format", required_argument, NULL, 'f' },
        { "read-only", no_argument, NULL, 'r' },
        { "snapshot", no_argument, NULL, 's' },
        { "nocache", no_argument, NULL, 'n' },
        { "copy-on-read", no_argument, NULL, 'C' },
        { "misalign", no_argument, NULL, 'm' },
        { "native-aio", no_argument, NULL, 'k' },
        { "aio", required_argument, NULL, 'i' },
        { "discard", required_argument, NULL, 'd' },
        { "cache", required_argument, NULL, 't' },
        { "trace", required_argument, NULL, 'T' },
        { "object", required_argument, NULL, OPTION_OBJECT },
        { "image-opts", no_argument, NULL, OPTION_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 }
    };
    g_autofree char **cmdline = g_new0(char *, argc + 1);
    const char *format = NULL;
    OpenParams p = OPEN_PARAMS_INIT;
    int ncmdline = 0;
    int c, ret;

    tool_init(argv, usage);
    signal(SIGPIPE, SIG_IGN);

    while ((c = getopt_long(argc, argv, "hVc:d:f:rsnCmki:t:T:U", lopt,
                            NULL)) != -1) {
        switch (c) {
        case 'f':
            format = optarg;
            break;
        case 'c':
            cmdline[ncmdline++] = optarg;
            break;
        case 'm':
            /* -m (misaligned buffers) is accepted for compatibility. */
            break;
        case 'T':
            tool_trace_option(optarg);
            break;
        case 'V':
            printf("%s version " QGUARD_VERSION "\n"
                   "Copyright (c) 2026 The qguard authors\n", tool_name);
            exit(0);
        case 'h':
            usage();
            exit(0);
        case OPTION_OBJECT:
            tool_object_option(optarg, 1);
            break;
        case OPTION_IMAGE_OPTS:
            image_opts_mode = true;
            break;
        default:
            ret = open_param_opt(c, &p);
            if (ret < 0) {
                exit(1);
            } else if (ret == 0) {
                usage();
                exit(1);
            }
        }
    }
    if (argc - optind > 1) {
        usage();
        exit(1);
    }
    if (format && image_opts_mode) {
        error_report("--image-opts and -f are mutually exclusive");
        exit(1);
    }

    if (argc - optind == 1 && open_file_arg(argv[optind], format, &p) < 0) {
        exit(1);
    }

    ret = command_loop(cmdline, ncmdline);
    if (close_image() < 0) {
        ret = -EIO;
    }
    return ret < 0 ? 1 : 0;
}

