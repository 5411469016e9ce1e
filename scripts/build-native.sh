#!/usr/bin/env bash
# Brings the addon up to date with native/ before the tests: an incremental
# make where node-gyp has configured build/ already (npm install did), a full
# build otherwise. node-gyp-build alone would keep loading a stale binary.
set -euo pipefail
cd "$(dirname "$0")/.."
# binding.gyp changed (sources, defines): configure again, or the old Makefile builds the old addon.
if [ -f build/Makefile ] && [ build/Makefile -nt binding.gyp ]; then exec npx --no-install node-gyp build; fi
exec npx --no-install node-gyp rebuild
