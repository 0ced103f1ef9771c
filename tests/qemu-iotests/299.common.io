# SPDX-License-Identifier: MIT
# Copyright (c) 2026 The qguard authors
#
# Helpers for the qguard-io tests (2xx), sourced after common.rc.
# _io_compare runs one command line through qemu-io and through qguard-io,
# each in a fresh copy of the pristine images in $IMAGES, and prints both
# outputs (timings filtered) and whether they are the same.

IMAGES="$TEST_DIR/images"
mkdir -p "$IMAGES"

# _filter_qemu_io collapses the transfer size too and misses times of a
# second or more ("0:00:01.20 (...)") and -C lines; this keeps the size
# and takes all timing forms.
_filter_io_timing()
{
    sed -e 's/ ops; [0-9:.]*\( sec\)\{0,1\} ([0-9.a-z]* [A-Za-z]*\/sec and [0-9.a-z]* ops\/sec)$/ ops; XX:XX:XX.X (XXX YYY\/sec and XXX ops\/sec)/' \
        -e 's/^\([0-9]*,[0-9]*\),[0-9]*:[0-9][0-9]:[0-9.]*,[0-9.a-z]*,[0-9.a-z]*$/\1,TIME,RATE,OPS/' |
    _filter_qemu_io
}

# Quote the arguments the way a user would type them.
_io_quote()
{
    local a sep=""

    for a in "$@"; do
        case "$a" in
        *[!A-Za-z0-9_.,=/:+-]* | "") printf "%s'%s'" "$sep" "$a" ;;
        *) printf '%s%s' "$sep" "$a" ;;
        esac
        sep=" "
    done
}

# Standard input for the tool runs (interactive mode); /dev/null by default.
IO_STDIN=/dev/null

# _io_run OUT BIN ARGS...: BIN in a fresh copy of $IMAGES; OUT gets the
# filtered stdout+stderr and the exit code.
_io_run()
{
    local out=$1 bin=$2 rc

    shift 2
    rm -rf "$TEST_DIR/work"
    cp -a "$IMAGES" "$TEST_DIR/work"
    # A tool killed by a signal (abort) makes bash report it with a PID and
    # a line number; exec puts that report here, where it is dropped.
    { (cd "$TEST_DIR/work" && exec "$bin" "$@" <"$IO_STDIN") >"$out.raw" 2>&1
    } 2>/dev/null
    rc=$?
    # Keep the prompts (qemu-io's last one has no newline) under one name.
    sed -e 's/qemu-io> /TOOL> /g' -e 's/qguard-io> /TOOL> /g' "$out.raw" |
        _filter_io_timing | _filter_tool_names >"$out"
    printf '[exit %d]\n' "$rc" >>"$out"
}

# _io_compare ARGS...: qemu-io ARGS and qguard-io ARGS, both outputs.
_io_compare()
{
    local a="$TEST_DIR/out.qemu-io" b="$TEST_DIR/out.qguard-io"
    local line

    line=$(_io_quote "$@")
    echo "\$ qemu-io${line:+ $line}"
    if [ "$IO_STDIN" != /dev/null ]; then
        echo "  (standard input: $(tr '\n' ';' <"$IO_STDIN"))"
    fi
    _io_run "$a" "$QEMU_IO" "$@"
    _io_run "$b" "$QGUARD_IO" "$@"
    echo "--- qemu-io"
    cat "$a"
    echo "--- qguard-io"
    cat "$b"
    if cmp -s "$a" "$b"; then
        echo "=> same"
    else
        echo "=> DIFFERENT"
    fi
    echo
}

# _io_c IMAGE CMD...: shorthand for _io_compare -c CMD ... IMAGE.
_io_c()
{
    local img=$1 args=() c

    shift
    for c in "$@"; do
        args+=(-c "$c")
    done
    _io_compare "${args[@]}" "$img"
}
