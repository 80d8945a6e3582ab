/**
 * After `tsc`: keeps in dist/ only the declaration files that dist/index.d.ts
 * reaches through its relative imports, so the package's types show the
 * public API and nothing else. Internal modules (the heartbeat, the acquire
 * paths, the wait pool, ...) keep their .js, which the public ones require,
 * but lose their .d.ts. Internal exports of the public modules are stripped
 * by `stripInternal` (`@internal` in their TSDoc).
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const dist = path.resolve(__dirname, '../dist');
const reached = new Set();
const pending = ['index.d.ts'];
while (pending.length > 0) {
  const file = pending.pop();
  if (reached.has(file)) continue;
  reached.add(file);
  const text = fs.readFileSync(path.join(dist, file), 'utf8');
  for (const m of text.matchAll(/\bfrom\s+'(\.{1,2}\/[^']+)'|\bimport\(\s*'(\.{1,2}\/[^']+)'\s*\)/g)) {
    const spec = m[1] ?? m[2];
    pending.push(path.relative(dist, path.resolve(dist, path.dirname(file), `${spec}.d.ts`)));
  }
}
// tsc emits dist/ flat (src/ has no subdirectories).
for (const file of fs.readdirSync(dist)) {
  if (file.endsWith('.d.ts') && !reached.has(file)) fs.rmSync(path.join(dist, file));
}
