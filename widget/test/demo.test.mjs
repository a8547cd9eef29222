// The demo in a real browser (docs/configuration.md, [demo]): the visitor page /demo and the
// agent inbox /demo/agent talk to each other, and the agent inbox works with the short-lived
// agent token it fetches from the server. No secret key appears in anything the browser gets.
//
// Run: scripts/browser-test.sh (with the widget tests).

import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { artifactsDir, launchBrowser, recordPage, startServer } from './harness.mjs';

let server;
let browser;

before(async () => {
  server = await startServer({ demo: true });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test('demo: visitor and agent inbox talk; the inbox holds an agent token, never a secret key', { timeout: 90_000 }, async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const bodies = [];
  context.on('response', async (r) => {
    try {
      bodies.push({ url: r.url(), text: await r.text() });
    } catch (_) {
      /* redirects and aborted requests have no body */
    }
  });
  const inbox = await context.newPage();
  const rec = recordPage(inbox);
  // Every time the inbox fetches its conversation list (it must not poll: the feed is live).
  const listFetches = [];
  inbox.on('request', (r) => {
    if (r.method() === 'GET' && /\/api\/v1\/conversations\?/.test(r.url())) listFetches.push(Date.now());
  });
  try {
    await inbox.goto(`${server.base}/demo/agent`);
    await inbox.locator('[data-lc=agent-status][data-status=connected]').waitFor({ timeout: 15_000 });
    // The catch-up fetch after connecting, then nothing more.
    await inbox.waitForTimeout(500);
    const fetchesBefore = listFetches.length;

    const visitor = await context.newPage();
    await visitor.goto(`${server.base}/demo`);
    await visitor.locator('[data-lc=launcher]').click({ timeout: 15_000 });
    await visitor.locator('[data-lc=input]').fill('Hello demo agent');
    await visitor.locator('[data-lc=send]').click();

    // The inbox lists the conversation live from its feed (no reload, no poll: the list was
    // not fetched again), opens it and shows the message; the visitor shows as online.
    await inbox.locator('[data-lc=agent-conversation]').first().waitFor({ timeout: 10_000 });
    await inbox.locator('[data-lc=agent-messages]', { hasText: 'Hello demo agent' }).waitFor({ timeout: 10_000 });
    await inbox.locator('[data-lc=agent-avatar][data-online=true]').first().waitFor({ timeout: 10_000 });
    // Longer than the old 3 s poll: still no list fetch.
    await inbox.waitForTimeout(3500);
    assert.equal(listFetches.length, fetchesBefore, 'the inbox fetched its list again: it polls');
    await inbox.locator('[data-lc=agent-input]').fill('Hi, Demo Agent here');
    await inbox.locator('[data-lc=agent-send]').click();
    await visitor.locator('[data-lc=message]', { hasText: 'Hi, Demo Agent here' }).waitFor({ timeout: 15_000 });

    // Assign to me, then unassign: the header and the list follow, and the server stored it
    // (the PATCH reply names the agent the token speaks as).
    await inbox.locator('[data-lc=agent-assign]', { hasText: 'Assign to me' }).click();
    await inbox.locator('#conv-sub', { hasText: 'Assigned to you' }).waitFor({ timeout: 10_000 });
    await inbox.locator('[data-lc=agent-conversation-meta]', { hasText: 'Assigned to you' }).first().waitFor({ timeout: 10_000 });
    assert.ok(bodies.some((b) => b.text.includes('"assignee":"demo-agent"')), 'the assignment was stored');
    await inbox.locator('[data-lc=agent-assign]', { hasText: 'Unassign' }).click();
    await inbox.locator('#conv-sub', { hasText: 'Unassigned' }).waitFor({ timeout: 10_000 });

    const tokens = bodies.filter((b) => b.url.endsWith('/demo/agent/token'));
    assert.ok(tokens.length >= 1, 'the inbox fetched an agent token');
    assert.match(JSON.parse(tokens[0].text).token, /^eyJ/);
    for (const b of bodies) assert.ok(!b.text.includes('sk_live_'), `a secret key in ${b.url}`);
    assert.ok(!(await inbox.content()).includes('sk_live_'));
  } catch (e) {
    const shot = join(artifactsDir, 'failure-demo.png');
    await inbox.screenshot({ path: shot }).catch(() => {});
    e.message += `\n  screenshot: ${shot}\n  page activity: ${rec.summary()}\n  server log (tail):\n    ${server.stderr().trim().split('\n').slice(-15).join('\n    ')}`;
    throw e;
  } finally {
    await context.close();
  }
});
