#!/usr/bin/env bash
# npm run prebuilds (not "prebuild": npm would run that before every "build").
# Prebuilt addons for linux-x64 and linux-arm64 into prebuilds/<platform>-<arch>/,
# with prebuildify. `npm pack` runs this (prepack) and ships prebuilds/; at
# install, node-gyp-build loads the one for the host and builds from source
# (binding.gyp) only where none fits. One Node-API build serves every Node >= 20.
#
# A foreign architecture is cross-compiled with Debian's cross toolchain
# (apt-get install g++-aarch64-linux-gnu for arm64). PREBUILD_ARCHES picks the
# architectures (default: "x64 arm64").
set -euo pipefail
cd "$(dirname "$0")/.."

host=$(node -p process.arch)
read -r -a arches <<<"${PREBUILD_ARCHES:-x64 arm64}"

# Node's headers: those next to this node (a distribution's nodejs package has
# them) rather than a download. They are the same for every architecture.
if [ -z "${npm_config_nodedir:-}" ]; then
  nodedir=$(node -p "require('path').resolve(process.execPath, '../..')")
  [ -f "$nodedir/include/node/common.gypi" ] && export npm_config_nodedir=$nodedir
fi

declare -A triplet=([x64]=x86_64-linux-gnu [arm64]=aarch64-linux-gnu)
declare -A machine=([x64]='Advanced Micro Devices X86-64' [arm64]=AArch64)

for arch in "${arches[@]}"; do rm -rf "prebuilds/linux-$arch"; done
for arch in "${arches[@]}"; do
  prefix=
  if [ "$arch" != "$host" ]; then
    prefix=${triplet[$arch]:?no cross toolchain known for $arch}-
    if ! command -v "${prefix}g++" >/dev/null; then
      echo "prebuild: ${prefix}g++ not found; install the cross compiler (Debian: apt-get install g++-${triplet[$arch]%%-*}-linux-gnu)" \
        "or leave $arch out with PREBUILD_ARCHES" >&2
      exit 2
    fi
  fi
  echo "prebuild: linux-$arch" >&2
  CC=${prefix}gcc CXX=${prefix}g++ LINK=${prefix}g++ AR=${prefix}ar PREBUILD_STRIP_BIN=${prefix}strip \
    npx prebuildify --napi --strip --tag-libc --arch "$arch"
  binary=$(ls prebuilds/linux-"$arch"/*.node)
  # A cross build that silently produced a host binary would ship the wrong code.
  if ! readelf -h "$binary" | grep -q "Machine:[[:space:]]*${machine[$arch]}"; then
    echo "prebuild: $binary is not an $arch binary:" >&2
    readelf -h "$binary" | grep Machine >&2
    exit 1
  fi
  echo "prebuild: $binary ($(stat -c %s "$binary") bytes)" >&2
done
# build/ is left configured for the last architecture, without its output
# (prebuildify moved it): remove it so that the next `npm run build:native`
# (npm test runs it) configures and builds for the host again.
rm -rf build
