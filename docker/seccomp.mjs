#!/usr/bin/env node
// Writes Docker's default seccomp profile with userfaultfd(2) allowed, the one
// syscall this library needs that the default refuses.
//
//   node docker/seccomp.mjs DEFAULT_PROFILE > docker/seccomp.json
//
// DEFAULT_PROFILE is the default.json of the engine you run (moby's
// profiles/seccomp/default.json at that engine's version; Debian ships one in
// golang-github-docker-docker-dev). docker/seccomp.json in this repository
// was made from Debian bookworm's (Docker 20.10.24); regenerate it from your
// engine's own so that syscalls it allows and 20.10 did not stay allowed.
import fs from 'node:fs';

const [source] = process.argv.slice(2);
if (!source) {
  console.error('usage: node docker/seccomp.mjs DEFAULT_PROFILE > seccomp.json');
  process.exit(2);
}
const profile = JSON.parse(fs.readFileSync(source, 'utf8'));
if (!Array.isArray(profile.syscalls)) throw new Error(`${source} is not a seccomp profile (no syscalls)`);
if (profile.syscalls.some((rule) => rule.action === 'SCMP_ACT_ALLOW' && rule.names?.includes('userfaultfd'))) {
  console.error(`${source} allows userfaultfd already`);
} else {
  // The unconditional allow rule: no includes or excludes (no capability, arch or kernel condition).
  const empty = (condition) => !condition || Object.keys(condition).length === 0;
  const rule = profile.syscalls.find((r) => r.action === 'SCMP_ACT_ALLOW' && empty(r.includes) && empty(r.excludes) && !r.args?.length);
  if (!rule) throw new Error(`${source} has no unconditional SCMP_ACT_ALLOW rule to add userfaultfd to`);
  rule.names = [...rule.names, 'userfaultfd'].sort();
}
process.stdout.write(`${JSON.stringify(profile, null, '\t')}\n`);
