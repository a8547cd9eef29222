// Time from the loader.js request to a usable widget on the demo page, in headless Chromium.
import { chromium } from 'playwright-core';
// Usage: node widget/scripts/demo-timing.mjs http://127.0.0.1:8080   (a running larachat serve)
const B = process.argv[2] || 'http://127.0.0.1:8080';
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--headless','--no-sandbox','--disable-gpu','--disable-background-networking'] });
const rows = [];
for (let i = 0; i < 7; i++) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  await page.goto(B + '/demo', { waitUntil: 'commit' });
  await page.locator('[data-lc=launcher]').waitFor({ state: 'visible' });
  const launcher = await page.evaluate(() => performance.now());
  await page.waitForFunction(() => window.LaraChat && window.LaraChat._state && window.LaraChat._state().connected);
  const connected = await page.evaluate(() => performance.now());
  const loader = await page.evaluate(() => performance.getEntriesByType('resource').find(e => e.name.includes('/widget/loader.js')).startTime);
  rows.push({ loaderStart: loader, launcherAfterLoader: launcher - loader, connectedAfterLoader: connected - loader });
  await ctx.close();
}
await browser.close();
const med = k => { const v = rows.slice(1).map(r => r[k]).sort((a,b)=>a-b); return v[Math.floor(v.length/2)].toFixed(0); };
console.log(JSON.stringify(rows.map(r => Object.fromEntries(Object.entries(r).map(([k,v]) => [k, Math.round(v)])))));
console.log('median (runs 2-7): launcher visible', med('launcherAfterLoader'), 'ms after loader.js request; connected', med('connectedAfterLoader'), 'ms');
