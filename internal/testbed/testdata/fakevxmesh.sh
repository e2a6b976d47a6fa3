#!/bin/sh
# Stand-in for the vxmesh binary, used by the testbed's own tests.
# "daemon": records its netns, creates the socket path, runs until SIGTERM
# ("--fail" makes it exit at once). "network ls": succeeds once the socket
# path exists. "echo ARGS": prints ARGS. "fail N": exits N with a message.
# The daemon writes its arguments, one a line, to $state/args.
all=$(printf '%s\n' "$@")
sock=""; state=""; mode=""; fail=""; args=""
while [ $# -gt 0 ]; do
	case "$1" in
	--socket) sock=$2; shift 2 ;;
	--state-dir) state=$2; shift 2 ;;
	--node|--netns-prefix|--advertise|--cluster-key-file|--join|--node-grace) shift 2 ;;
	--fail) fail=1; shift ;;
	*) if [ -z "$mode" ]; then mode=$1; else args="$args $1"; fi; shift ;;
	esac
done
case "$mode" in
daemon)
	if [ -n "$fail" ]; then echo "fake daemon: boom" >&2; exit 3; fi
	readlink /proc/self/ns/net > "$state/netns"
	printf '%s\n' "$all" > "$state/args"
	trap 'rm -f "$sock"; echo "fake daemon: stopping"; exit 0' TERM
	echo "fake daemon: started"
	: > "$sock"
	while :; do sleep 0.05; done ;;
network) [ -e "$sock" ] || { echo "cannot reach daemon at $sock" >&2; exit 1; } ;;
echo) echo "$args" ;;
fail) set -- $args; echo "failing with $1" >&2; exit "$1" ;;
*) echo "unknown command $mode" >&2; exit 2 ;;
esac
