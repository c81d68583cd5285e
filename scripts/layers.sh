#!/usr/bin/env bash
# The server crate's layering: which top-level module of src/ (a file `src/M.rs` or a folder
# `src/M/`) names which other (`crate::M`, tests and comments included). Prints one "user used"
# line per edge and fails when the edges form a circle (tsort finds it). lib.rs, the facade on
# top, and main.rs, a crate of its own, are not modules. ARCHITECTURE.md's code map states the
# resulting order.
set -euo pipefail
cd "$(dirname "$0")/../src"

modules=$(find . -mindepth 1 -maxdepth 1 \( -name '*.rs' -o -type d \) ! -name lib.rs ! -name main.rs \
  | sed 's|^\./||; s|\.rs$||' | sort -u)
if grep -rqE 'crate::\{' --include='*.rs' .; then
  echo "layers.sh: a grouped \`use crate::{...}\` hides its modules from this check; name each path" >&2
  exit 1
fi
edges=$(for m in $modules; do
  files=$( { [ -f "$m.rs" ] && echo "$m.rs"; [ -d "$m" ] && find "$m" -name '*.rs'; } || true)
  for used in $(grep -ohE 'crate::[a-z_]+' $files | sed 's/^crate:://' | sort -u); do
    if [ "$used" != "$m" ] && grep -qx "$used" <<<"$modules"; then
      echo "$m $used"
    fi
  done
done)
echo "$edges"
if ! tsort <<<"$edges" >/dev/null; then
  echo "layers.sh: the modules above import each other in a circle" >&2
  exit 1
fi
