#!/usr/bin/env bash
# Build the pgcdc extension and install it into PostgreSQL (needs root for the system dirs).
#
#   pgcdc_ext/install.sh            release build (cargo pgrx package), about 2-3 min clean
#   pgcdc_ext/install.sh --debug    debug build (faster to build, 50x bigger .so, slower)
#
# Installs with `install` (a new inode), never by rewriting the loaded file in place, so a
# running server that preloads pgcdc keeps its old code until it restarts (RECIPE-pgrx.md P3).
set -euo pipefail
cd "$(dirname "$0")"
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
mode=${1:-}
if [ "$mode" = "--debug" ]; then
  cargo pgrx package --debug --pg-config "$PG_CONFIG" >/dev/null
  out=../target/debug/pgcdc-pg$("$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
else
  cargo pgrx package --pg-config "$PG_CONFIG" >/dev/null
  out=../target/release/pgcdc-pg$("$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
fi
libdir=$("$PG_CONFIG" --pkglibdir)
extdir=$("$PG_CONFIG" --sharedir)/extension
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
$SUDO install -m 755 "$out$libdir/pgcdc.so" "$libdir/pgcdc.so"
for f in "$out$extdir"/pgcdc*; do
  $SUDO install -m 644 "$f" "$extdir/"
done
echo "installed pgcdc ($( [ "$mode" = "--debug" ] && echo debug || echo release )) into $libdir and $extdir"
