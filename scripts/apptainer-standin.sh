#!/bin/sh
# A stand-in for `apptainer` (which has no Debian package), used by the tests to exercise fxr's
# apptainer template: it takes the command line that template produces,
#   apptainer exec [--containall] [--bind SRC:DST]... [--env K=V]... IMAGE COMMAND...
# and runs COMMAND in IMAGE (a root filesystem directory, where apptainer would take a SIF file)
# with bubblewrap. Errors are worded as apptainer words them.
set -eu
if [ "${1:-}" != exec ]; then
    echo "FATAL:   this stand-in only runs \`apptainer exec\`" >&2
    exit 255
fi
shift
binds=""
envs=""
while [ $# -gt 0 ]; do
    case "$1" in
        --containall) shift ;;
        --bind) binds="$binds --ro-bind ${2%%:*} ${2#*:}"; shift 2 ;;
        --env) envs="$envs --setenv ${2%%=*} ${2#*=}"; shift 2 ;;
        -*) echo "Error: unknown flag: $1" >&2; exit 255 ;;
        *) break ;;
    esac
done
image=$1
shift
if [ ! -d "$image" ]; then
    echo "FATAL:   could not open image $image: failed to retrieve path for $image: lstat $image: no such file or directory" >&2
    exit 255
fi
# shellcheck disable=SC2086 # the bind and env lists are meant to split into words
exec bwrap --unshare-all --die-with-parent --new-session --ro-bind "$image" / --proc /proc \
    --dev /dev --tmpfs /tmp $binds $envs "$@"
