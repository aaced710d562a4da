#!/usr/bin/env bash
# Smoke test of the load tool, for CI (issues 7 and 13): `bench -smoke`
# starts a private Cyrus 2.3.18 (where .ci/install-deps built it; skipped,
# saying so, where its sources are absent) and a private Dovecot, each with
# uidgate in front, on loopback ports; runs the Cyrus 2.3 workloads briefly
# and `imapload -smoke` (every workload, briefly, with checks) against
# Dovecot, directly and through uidgate; stops everything and exits
# non-zero on any error. Needs only what .ci/install-deps installs, runs as
# root from anywhere, and takes about 20 seconds.
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
