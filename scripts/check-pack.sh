#!/usr/bin/env bash
# Checks the package as users get it: `npm pack`, then `npm install` of the
# tarball in an empty directory with no C or C++ compiler, make or python on
# PATH (so the prebuilt addon must be used), then a real fault served by the
# installed copy. Usage: scripts/check-pack.sh [tarball] (default: npm pack).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

tarball=${1:-}
if [ -z "$tarball" ]; then
  tarball=$root/$(npm pack --silent | tail -n1)
fi
work=$(mktemp -d /tmp/uffd-pack.XXXXXX)
trap 'rm -rf "$work"' EXIT

# A PATH with node, npm and a shell, and nothing that could build an addon.
mkdir -p "$work/bin" "$work/app"
for tool in node npm npx sh env; do ln -s "$(command -v "$tool")" "$work/bin/$tool"; done
for tool in cc gcc g++ c++ make python3; do
  if PATH=$work/bin command -v "$tool" >/dev/null; then echo "check-pack: $tool is still on PATH" >&2; exit 1; fi
done

cd "$work/app"
PATH=$work/bin npm init -y >/dev/null
PATH=$work/bin npm install --no-audit --no-fund "$tarball" >/dev/null
test ! -e node_modules/userfaultfd/build || { echo "check-pack: install built from source" >&2; exit 1; }
cat > smoke.cjs <<'JS'
const { Worker } = require('node:worker_threads');
const { Userfaultfd, Mapping, systemPageSize } = require('userfaultfd');
const page = systemPageSize();
const memory = Mapping.anonymous(16 * page);
const uffd = Userfaultfd.open();
uffd.register(memory);
uffd.serve((fault) => void fault.copy(Buffer.alloc(page, 7)));
const worker = new Worker(`
  const { workerData, parentPort } = require('node:worker_threads');
  const view = require('userfaultfd').attachView(workerData.address, workerData.length);
  let sum = 0;
  for (let i = 0; i < view.length; i += workerData.page) sum += view[i];
  parentPort.postMessage(sum);
`, { eval: true, workerData: { address: memory.address, length: memory.length, page } });
worker.on('message', (sum) => {
  uffd.close();
  const loaded = Object.keys(require.cache).find((file) => file.endsWith('.node'));
  console.log(JSON.stringify({ sum, loaded }));
  if (sum !== 16 * 7 || !/prebuilds/.test(loaded)) process.exit(1);
});
JS
PATH=$work/bin node smoke.cjs
echo "check-pack: $(basename "$tarball") installs without a compiler and serves faults from its prebuilt addon" >&2
