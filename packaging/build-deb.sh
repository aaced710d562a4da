#!/usr/bin/env bash
# Builds uidgate's .deb: bash packaging/build-deb.sh [OUTDIR]
#
# From a git checkout, with Go and nothing else installed: nfpm and
# go-md2man are Go tools pinned in packaging/tools.mod (go tool -modfile=…),
# fetched through the module proxy on first use. Prints the .deb's path as
# its last line (progress goes to stderr).
#
#   version   the tag vX.Y.Z when HEAD is tagged, else LAST-TAG+gitDATE.COMMIT
#             (0.0.0+git20261203161300.ec06203ec12c with no tag; ".dirty"
#             with uncommitted changes). UIDGATE_VERSION overrides it (no
#             git needed then; UIDGATE_COMMIT names the commit).
#   arch      GOARCH (default the host's): a static binary (CGO_ENABLED=0),
#             so GOARCH=arm64 cross-builds.
#
# The binary carries the version and commit (go build -ldflags -X, and
# -buildvcs=true's build information): `uidgate version -v`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="${1:-dist}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

log() { printf 'build-deb: %s\n' "$*" >&2; }

commit="${UIDGATE_COMMIT:-}"
buildvcs=false
if [ -z "${UIDGATE_VERSION:-}" ] || [ -z "$commit" ]; then
	if ! git rev-parse --git-dir >/dev/null 2>&1; then
		log "not a git checkout: set UIDGATE_VERSION (and UIDGATE_COMMIT)"
		exit 2
	fi
	buildvcs=true
	commit="${commit:-$(git rev-parse HEAD)}"
fi
if [ -n "${UIDGATE_VERSION:-}" ]; then
	version="$UIDGATE_VERSION"
else
	dirty=""
	git diff --quiet HEAD -- 2>/dev/null || dirty=".dirty"
	if tag=$(git describe --tags --exact-match --match 'v[0-9]*' HEAD 2>/dev/null) && [ -z "$dirty" ]; then
		version="${tag#v}"
	else
		base=$(git describe --tags --abbrev=0 --match 'v[0-9]*' HEAD 2>/dev/null || echo v0.0.0)
		date=$(TZ=UTC git show -s --date=format-local:%Y%m%d%H%M%S --format=%cd HEAD)
		version="${base#v}+git${date}.${commit:0:12}${dirty}"
	fi
fi
# Reproducible file times in the package: the commit's.
if [ -z "${SOURCE_DATE_EPOCH:-}" ] && [ "$buildvcs" = true ]; then
	SOURCE_DATE_EPOCH=$(git show -s --format=%ct HEAD)
	export SOURCE_DATE_EPOCH
fi

arch="${GOARCH:-$(go env GOARCH)}"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

log "uidgate $version (commit ${commit:-unknown}) for linux/$arch"
CGO_ENABLED=0 GOOS=linux GOARCH="$arch" go build -trimpath -buildvcs="$buildvcs" \
	-ldflags "-s -w -X main.buildVersion=$version -X main.buildCommit=$commit" \
	-o "$stage/uidgate" ./cmd/uidgate

log "man page (go-md2man)"
go tool -modfile=packaging/tools.mod go-md2man -in packaging/uidgate.8.md -out "$stage/uidgate.8"
gzip -9n "$stage/uidgate.8"

deb="$out/uidgate_${version}_${arch}.deb"
log "nfpm → $deb"
rm -f "$deb"
UIDGATE_STAGE="$stage" UIDGATE_VERSION="$version" UIDGATE_ARCH="$arch" \
	go tool -modfile=packaging/tools.mod nfpm package --config packaging/nfpm.yaml --packager deb --target "$deb" >&2
echo "$deb"
