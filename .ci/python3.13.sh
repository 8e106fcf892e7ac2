#!/usr/bin/env bash
# Builds CPython 3.13 from Debian's source package (trixie) into $PREFIX, or reuses it if there.
# Why: these machines have only Python 3.11, and Debian 12 ships no 3.13; Debian 13's source of it
# (the upstream tarball, unpatched) builds in a few minutes on 2 cores. Prints the interpreter path.
set -euo pipefail
PREFIX="${PY313_PREFIX:-/opt/python3.13}"
for candidate in "$PREFIX/bin/python3.13" "$(command -v python3.13 || true)"; do
  if [ -n "$candidate" ] && "$candidate" -c 'import ssl, sqlite3, lzma, ctypes, bz2, zlib' >/dev/null 2>&1; then
    echo "$candidate"
    exit 0
  fi
done
log() { echo "python3.13: $*" >&2; }
[ "$(id -u)" = 0 ] || { log "needs root to add Debian's trixie source list and build packages"; exit 2; }
cat > /etc/apt/sources.list.d/trixie-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
log "apt-get update and build dependencies"
apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends dpkg-dev xz-utils \
  libssl-dev libsqlite3-dev liblzma-dev libffi-dev zlib1g-dev libbz2-dev libreadline-dev libncurses-dev \
  uuid-dev libgdbm-dev >/dev/null
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
log "apt-get source --download-only python3.13"
apt-get source -q --download-only python3.13 >/dev/null
tarball="$(ls python3.13_*.orig.tar.* | head -1)"
tar xf "$tarball"
cd "$(find . -maxdepth 1 -type d -name 'Python-3.13*' | head -1)"
log "configure and make ($(nproc) jobs) from $tarball"
./configure --prefix="$PREFIX" --quiet >/dev/null
make -s -j"$(nproc)" >/dev/null 2>&1
make -s altinstall >/dev/null 2>&1
"$PREFIX/bin/python3.13" -c 'import ssl, sqlite3, lzma, ctypes, bz2, zlib'
echo "$PREFIX/bin/python3.13"
