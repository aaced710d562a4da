#!/usr/bin/env bash
# Smoke test of the load tool, for CI (issue 7): starts a private Dovecot
# and uidgate on loopback ports, runs `imapload -smoke` (every workload,
# briefly, with checks) against Dovecot and through uidgate, stops both and
# exits non-zero on any error. Needs only what .ci/install-deps installs
# (Dovecot), runs as root from anywhere, and takes well under a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

work=$(mktemp -d)
# Dovecot's auth process (user dovecot) must reach the users file in here.
chmod 0755 "$work"
trap 'rm -rf "$work"' EXIT
# The bench binary stops every server it started on its way out (also on
# SIGTERM); `timeout` is the last resort if something hangs.
go build -o "$work/bench" ./bench
timeout --kill-after=10s 90s "$work/bench" -smoke -work "$work/run"
