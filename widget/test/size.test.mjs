// Size budget of the widget scripts, gzipped at level 9 as a CDN or the gateway would serve them.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const src = join(dirname(fileURLToPath(import.meta.url)), '..', 'src');

const budgets = [
  ['loader.js', 3 * 1024],
  ['widget.js', 30 * 1024],
];

for (const [file, budget] of budgets) {
  test(`${file} is at most ${budget} bytes gzipped`, () => {
    const raw = readFileSync(join(src, file));
    const gz = gzipSync(raw, { level: 9 }).length;
    console.log(`${file}: ${raw.length} bytes raw, ${gz} bytes gzipped (budget ${budget})`);
    assert.ok(gz <= budget, `${file} is ${gz} bytes gzipped, over the ${budget}-byte budget`);
  });
}
