/* SPDX-License-Identifier: MIT */
/*
 * qemu-io's debugging commands: break, remove_break, resume, wait_break
 * (blkdebug in QEMU), abort, sigraise and sleep.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io.h"

/* libqguard has no blkdebug: these fail as qemu-io's do without it. */
static int break_f(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("Could not set breakpoint: %s\n", strerror(ENOTSUP));
    return -ENOTSUP;
}

const Command break_cmd = {
    .name = "break", .func = break_f,
    .argmin = 2, .argmax = 2,
    .args = "event tag",
    .oneline = "sets a breakpoint on event and tags the stopped request as tag",
};

static int remove_break_f(int argc, char **argv)
{
    (void)argc;
    printf("Could not remove breakpoint %s: %s\n", argv[1], strerror(ENOTSUP));
    return -ENOTSUP;
}

const Command remove_break_cmd = {
    .name = "remove_break", .func = remove_break_f,
    .argmin = 1, .argmax = 1,
    .args = "tag",
    .oneline = "remove a breakpoint by tag",
};

static int resume_f(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("Could not resume request: %s\n", strerror(ENOTSUP));
    return -ENOTSUP;
}

const Command resume_cmd = {
    .name = "resume", .func = resume_f,
    .argmin = 1, .argmax = 1,
    .args = "tag",
    .oneline = "resumes the request tagged as tag",
};

static int wait_break_f(int argc, char **argv)
{
    (void)argc;
    /* qemu-io would wait forever for a breakpoint that cannot exist. */
    printf("Could not wait for breakpoint %s: %s\n", argv[1],
           strerror(ENOTSUP));
    return -ENOTSUP;
}

const Command wait_break_cmd = {
    .name = "wait_break", .func = wait_break_f,
    .argmin = 1, .argmax = 1,
    .args = "tag",
    .oneline = "waits for the suspension of a request",
};

static int abort_f(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    /*
     * As in qemu-io, nothing is flushed or closed in the image.  stdio is
     * flushed, unlike qemu-io (whose earlier output is lost when stdout is
     * not a terminal): what a command reported must not vanish.
     */
    fflush(stdout);
    fflush(stderr);
    abort();
}

const Command abort_cmd = {
    .name = "abort", .func = abort_f,
    .flags = CMD_NOFILE_OK,
    .oneline = "simulate a program crash using abort(3)",
};

static const char sigraise_help[] =
"\n"
" raises the given signal in this process\n"
"\n"
" Example:\n"
" 'sigraise " G_STRINGIFY(SIGTERM) "' - raises SIGTERM\n"
"\n"
" Nothing is flushed or closed first, so 'sigraise 9' leaves the image as\n"
" a crashed program would.\n"
"\n";

static int sigraise_f(int argc, char **argv)
{
    int64_t sig = cvtnum_arg(argv[1]);

    (void)argc;
    if (sig < 0) {
        return sig;
    } else if (sig > NSIG) {
        printf("signal argument '%s' is too large to be a valid signal\n",
               argv[1]);
        return -EINVAL;
    }
    /* The process may die: what was printed so far must not be lost. */
    fflush(stdout);
    fflush(stderr);
    raise(sig);
    return 0;
}

const Command sigraise_cmd = {
    .name = "sigraise", .func = sigraise_f,
    .argmin = 1, .argmax = 1, .flags = CMD_NOFILE_OK,
    .args = "signal",
    .oneline = "raises a signal",
    .help = sigraise_help,
};

static int sleep_f(int argc, char **argv)
{
    char *end;
    long ms;

    (void)argc;
    ms = strtol(argv[1], &end, 0);
    if (ms < 0 || *end != '\0') {
        printf("%s is not a valid number\n", argv[1]);
        return -EINVAL;
    }
    g_usleep((gulong)ms * 1000);
    return 0;
}

const Command sleep_cmd = {
    .name = "sleep", .func = sleep_f,
    .argmin = 1, .argmax = 1, .flags = CMD_NOFILE_OK,
    .oneline = "waits for the given value in milliseconds",
};
