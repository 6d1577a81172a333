#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-2-Clause
# Fails, naming the files, when a source file (C, header, CMake, script, Go peer) does not carry
# `SPDX-License-Identifier: BSD-2-Clause` on its first line (its second after a #! line).
# Usage: scripts/check-spdx.sh [SOURCE_DIR]   (ctest: license_headers)
set -euo pipefail
cd "${1:-$(dirname "$0")/..}"
tag='SPDX-License-Identifier: BSD-2-Clause'
bad=0
while IFS= read -r -d '' f; do
  first=$(head -n 1 "$f")
  case "$first" in '#!'*) first=$(sed -n 2p "$f") ;; esac
  if [[ "$first" != *"$tag"* ]]; then
    echo "missing '$tag' on the first line: $f"
    bad=1
  fi
done < <(find . \( -path ./build -o -path ./.git -o -path ./fuzz/corpus -o -path ./shared \) -prune -o \
           -type f \( -name '*.c' -o -name '*.h' -o -name '*.cmake' -o -name 'CMakeLists.txt' -o -name '*.in' \
           -o -name '*.sh' -o -name '*.go' -o -path './.ci/*' \) -print0)
exit $bad
