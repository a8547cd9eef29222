// Real-browser end-to-end tests of the embeddable widget (docs/widget.md): Debian's Chromium
// driven by playwright-core, against the real `larachat serve` binary (LARACHAT_BIN, else
// ../target/debug/larachat), with host pages served from their own origins. The agent side
// uses the Client API with a secret key. Every assertion is about what a visitor sees (the
// `data-lc` hooks inside the widget's open shadow root) or what the server stored.
//
// Run: scripts/browser-test.sh (installs Chromium, builds the server, runs `npm test`).
// Screenshots: widget/test-artifacts/ (desktop-closed, desktop-empty, desktop-open,
// desktop-dark-left-fr, mobile-closed, mobile; failure-<test>.png when a test fails, with what
// the page did and the server's last log lines in the error).

import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import {
  adminSession,
  agent,
  artifactsDir,
  embedPage,
  hostServer,
  launchBrowser,
  recordPage,
  sleep,
  startServer,
  tcpProxy,
  uid,
  userHash,
  waitFor,
} from './harness.mjs';

const TEST_TIMEOUT = 90_000;
/** The widget's longest reconnect delay (30 s, docs/widget.md) and a margin. */
const BACKOFF_CAP = 35_000;
const DESKTOP = { viewport: { width: 1280, height: 800 } };

let server; // larachat serve
let admin; // Admin API session
let host; // the tenant's site: its origin is in the allow-lists
let foreign; // another site, never allowed
let browser;

before(async () => {
  mkdirSync(artifactsDir, { recursive: true });
  for (const f of readdirSync(artifactsDir)) {
    if (f.startsWith('failure-')) rmSync(join(artifactsDir, f), { force: true });
  }
  server = await startServer();
  admin = await adminSession(server.base);
  host = await hostServer();
  foreign = await hostServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await host?.close();
  await foreign?.close();
  await server?.stop();
});

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

/** A project whose widget is allowed on `host` (unless `widget` says otherwise). */
async function newProject(widget = {}) {
  const p = await admin.project(`browser-${uid()}`, {
    allowed_origins: [host.origin],
    identity_verification: 'off',
    title: 'Acme support',
    greeting: 'Hi! Ask us anything.',
    ...widget,
  });
  return { ...p, agent: agent(server.base, p.secretKey) };
}

/** Registers an embed page for the project on `site` and returns its path. */
function embed(site, project, { settings = { position: 'bottom-right', theme: 'light', locale: 'en' }, user, base, body = '' } = {}) {
  const path = `/p-${uid()}.html`;
  const config = { apiKey: project.publishableKey, settings };
  if (user) config.user = user;
  site.page(path, embedPage({ larachatBase: base || server.base, config, title: 'Acme shop', body: body + shopBody() }));
  return path;
}

function shopBody() {
  return `<p>Welcome to Acme. Browse our catalogue of fine anvils, rockets and giant magnets.</p>
<ul>${['Anvil', 'Rocket skates', 'Giant magnet', 'Dehydrated boulders']
    .map((n, i) => `<li><b>${n}</b> — ${(i + 1) * 19}.99 € <button>Add to cart</button></li>`)
    .join('')}</ul>
<p style="height: 1200px">Free shipping over 50 €.</p>`;
}

/**
 * Opens a fresh browser context and page. `fn(page, rec, context)`; on failure a screenshot is
 * saved to test-artifacts/failure-<name>.png and what the page did is added to the error.
 */
async function withPage(name, contextOptions, fn) {
  const context = await browser.newContext(contextOptions);
  const page = await context.newPage();
  const rec = recordPage(page);
  try {
    return await fn(page, rec, context);
  } catch (e) {
    const shot = join(artifactsDir, `failure-${name}.png`);
    await page.screenshot({ path: shot }).catch(() => {});
    const log = server.stderr().trim().split('\n').slice(-15).join('\n    ');
    e.message += `\n  screenshot: ${shot}\n  page activity: ${rec.summary()}\n  server log (tail):\n    ${log}`;
    throw e;
  } finally {
    await context.close();
  }
}

const launcher = (page) => page.locator('[data-lc=launcher]');
const panel = (page) => page.locator('[data-lc=panel]');

/** Waits for the launcher, clicks it (or taps) and waits for the open panel and its input. */
async function openWidget(page, { tap = false } = {}) {
  await launcher(page).waitFor({ state: 'visible', timeout: 10_000 });
  if (tap) await launcher(page).tap();
  else await launcher(page).click();
  await panel(page).waitFor({ state: 'visible', timeout: 10_000 });
  await page.locator('[data-lc=input]').waitFor({ state: 'visible', timeout: 10_000 });
}

/** Waits until the panel stopped moving (open animation done), for screenshots and boxes. */
async function settle(page) {
  let last = '';
  await waitFor(
    async () => {
      const box = JSON.stringify(await panel(page).boundingBox());
      const same = box === last;
      last = box;
      return same;
    },
    { interval: 150, what: 'the panel to stop moving' },
  );
}

/** Types into the composer and presses the send button. */
async function sendText(page, text) {
  const input = page.locator('[data-lc=input]');
  await input.fill(text);
  await page.locator('[data-lc=send]').click();
}

/** The messages as the widget shows them, in DOM order. */
function domMessages(page) {
  return page.locator('[data-lc=message]').evaluateAll((els) =>
    els.map((el) => ({
      id: el.getAttribute('data-id') || '',
      state: el.getAttribute('data-state') || '',
      mine: el.getAttribute('data-mine'),
      text: el.textContent || '',
      visible: el.getClientRects().length > 0,
    })),
  );
}

async function domMessageWith(page, text) {
  const all = (await domMessages(page)).filter((m) => m.text.includes(text));
  assert.ok(all.length <= 1, `"${text}" is shown ${all.length} times: ${JSON.stringify(all)}`);
  return all[0];
}

/** Waits until the message with `text` is shown with `state` (and `mine`, when given). */
function waitMessage(page, text, { state, mine, timeout = 10_000 } = {}) {
  return waitFor(
    async () => {
      const m = await domMessageWith(page, text);
      if (!m) return false;
      if (state && m.state !== state) return false;
      if (mine !== undefined && m.mine !== String(mine)) return false;
      return m;
    },
    { timeout, what: `message "${text}"${state ? ` in state ${state}` : ''}` },
  );
}

/** `LaraChat._state()` of the page (a test hook of widget.js). */
function widgetState(page) {
  return page.evaluate(() => (window.LaraChat && typeof window.LaraChat._state === 'function' ? window.LaraChat._state() : null));
}

async function waitConnected(page, timeout = 10_000) {
  return waitFor(async () => (await widgetState(page))?.connected === true, { timeout, what: 'LaraChat._state().connected' });
}

/** Whether the page shows no widget at all: no host element, or one without any data-lc element. */
function noWidget(page) {
  return page.evaluate(() => {
    const el = document.getElementById('larachat-widget');
    if (!el) return { absent: true, hooks: 0 };
    const root = el.shadowRoot;
    const hooks = root ? root.querySelectorAll('[data-lc]').length : 0;
    const rect = el.getBoundingClientRect();
    return { absent: false, hooks, width: rect.width, height: rect.height };
  });
}

function isInitUrl(url) {
  return new URL(url).pathname === '/widget/v1/init';
}

/**
 * A page that must not get a widget: the init request is attempted, it is refused (a 403 the
 * page can see, or a CORS failure when the preflight is refused), no WebSocket is opened and
 * nothing is rendered.
 */
async function assertRefused(page, rec, url, { expectStatus403Visible = false } = {}) {
  await page.goto(url);
  await waitFor(() => rec.requests.some((r) => isInitUrl(r.url) && r.method === 'POST'), {
    what: 'the widget to attempt POST /widget/v1/init',
  });
  await waitFor(
    () =>
      rec.responses.some((r) => isInitUrl(r.url) && r.method === 'POST') ||
      rec.failures.some((r) => isInitUrl(r.url) && r.method === 'POST'),
    { what: 'the init request to settle' },
  );
  // Leave the widget time to (wrongly) render or connect.
  await sleep(2_000);
  const initResponses = rec.responses.filter((r) => isInitUrl(r.url) && r.method === 'POST');
  const initFailures = rec.failures.filter((r) => isInitUrl(r.url) && r.method === 'POST');
  for (const r of initResponses) assert.equal(r.status, 403, `init answered ${r.status}, expected 403`);
  if (expectStatus403Visible) {
    assert.ok(initResponses.length >= 1, `the page saw no init response (failures: ${JSON.stringify(initFailures)})`);
  } else {
    assert.ok(initResponses.length + initFailures.length >= 1);
  }
  assert.deepEqual(rec.websockets, [], 'a refused widget must not open a WebSocket');
  const w = await noWidget(page);
  assert.ok(w.absent || w.hooks === 0, `a refused widget must render nothing, found ${JSON.stringify(w)}`);
  assert.equal(await launcher(page).count(), 0);
  return { initResponses, initFailures };
}

/** What the server answers a browser on `origin` for init (preflight and POST). */
async function serverInitFromOrigin(project, origin, body = {}) {
  const url = `${server.base}/widget/v1/init?key=${encodeURIComponent(project.publishableKey)}`;
  const pre = await fetch(url, {
    method: 'OPTIONS',
    headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type' },
  });
  const post = await fetch(url, {
    method: 'POST',
    headers: { origin, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return {
    preflight: pre.status,
    preflightAllowOrigin: pre.headers.get('access-control-allow-origin'),
    status: post.status,
    allowOrigin: post.headers.get('access-control-allow-origin'),
    body: await post.json().catch(() => null),
  };
}

const byId = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

// ---------------------------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------------------------

describe('widget in a real browser', { timeout: 10 * 60_000 }, () => {
  test('visitor → agent → visitor: send, typing, reply, read receipts both ways', { timeout: TEST_TIMEOUT }, async () => {
    const project = await newProject();
    const ag = project.agent;
    await withPage('visitor-agent', DESKTOP, async (page) => {
      await page.goto(host.url(embed(host, project)));
      await openWidget(page);

      await sendText(page, 'Hello from the visitor');
      const mine = await waitMessage(page, 'Hello from the visitor', { state: 'sent', mine: true });
      assert.match(mine.id, /^[0-9a-f-]{36}$/, 'a sent message carries its server id');

      // The agent finds the conversation and the message.
      const conv = await ag.waitConversation();
      const serverMsgs = await ag.messages(conv.id);
      const visitorMsg = serverMsgs.find((m) => m.text === 'Hello from the visitor');
      assert.ok(visitorMsg, `the server has the visitor's message: ${JSON.stringify(serverMsgs)}`);
      assert.equal(visitorMsg.sender.type, 'end_user');
      assert.equal(visitorMsg.id, mine.id, 'the widget shows the server id of its message');

      // Typing indicator.
      const typing = page.locator('[data-lc=typing]');
      assert.equal(await typing.isVisible(), false, 'no typing indicator before the agent types');
      const t = await ag.typing(conv.id, 'start');
      assert.equal(t.status, 202);
      await typing.waitFor({ state: 'visible', timeout: 10_000 });

      // The reply appears (not mine) and the typing indicator goes away.
      const reply = await ag.send(conv.id, 'Hi, this is Ana. How can I help?');
      const replyId = reply.message?.id ?? reply.id;
      const shown = await waitMessage(page, 'Hi, this is Ana. How can I help?', { mine: false });
      assert.equal(shown.id, replyId);
      await typing.waitFor({ state: 'hidden', timeout: 10_000 });

      // The open panel marks the reply read: the end user's marker reaches it.
      await waitFor(
        async () => {
          const reads = await ag.reads(conv.id);
          const me = reads.find((r) => r.reader.type === 'end_user' && r.reader.id === visitorMsg.sender.id);
          return me && me.last_read_message_id >= replyId;
        },
        { what: "the end user's read marker to reach the agent's reply" },
      );

      // The agent reads the visitor's message: "Seen".
      const seen = page.locator('[data-lc=seen]');
      assert.equal(await seen.isVisible(), false, '"Seen" before the agent read anything');
      await ag.read(conv.id, visitorMsg.id);
      await seen.waitFor({ state: 'visible', timeout: 10_000 });

      assert.deepEqual(
        (await domMessages(page)).map((m) => m.id),
        (await ag.messages(conv.id)).map((m) => m.id),
        'the widget shows exactly the server messages, in order',
      );
    });
  });

  test('reload: same history (ids, order) and same visitor', { timeout: TEST_TIMEOUT }, async () => {
    const project = await newProject();
    const ag = project.agent;
    await withPage('reload', DESKTOP, async (page) => {
      await page.goto(host.url(embed(host, project)));
      await openWidget(page);
      await sendText(page, 'First visitor message');
      await waitMessage(page, 'First visitor message', { state: 'sent' });
      const conv = await ag.waitConversation();
      await ag.send(conv.id, 'Agent answer in between');
      await waitMessage(page, 'Agent answer in between', { mine: false });
      await sendText(page, 'Second visitor message');
      await waitMessage(page, 'Second visitor message', { state: 'sent' });

      const before = (await domMessages(page)).map((m) => m.id);
      const serverIds = (await ag.messages(conv.id)).map((m) => m.id);
      assert.equal(before.length, 3);
      assert.deepEqual(before, serverIds);
      const userBefore = (await widgetState(page))?.userId;
      assert.ok(userBefore, 'LaraChat._state().userId is set');
      const serverSender = (await ag.messages(conv.id)).find((m) => m.sender.type === 'end_user').sender.id;
      assert.equal(userBefore, serverSender, "_state().userId is the end user the server knows");

      await page.reload();
      await openWidget(page);
      const after = await waitFor(
        async () => {
          const ids = (await domMessages(page)).map((m) => m.id);
          return ids.length >= 3 && ids;
        },
        { what: 'the history after reload' },
      );
      assert.deepEqual(after, before, 'same messages, same ids, same order after reload');
      assert.equal((await widgetState(page))?.userId, userBefore, 'same visitor after reload');

      // And the server agrees: a new message lands in the same conversation, from the same user.
      await sendText(page, 'After the reload');
      await waitMessage(page, 'After the reload', { state: 'sent' });
      const convs = await ag.conversations();
      assert.equal(convs.length, 1, 'still one conversation');
      const last = (await ag.messages(conv.id)).at(-1);
      assert.equal(last.text, 'After the reload');
      assert.equal(last.sender.id, userBefore);
    });
  });

  test('network cut (context.setOffline): nothing lost, nothing doubled', { timeout: TEST_TIMEOUT }, async () => {
    const project = await newProject();
    const ag = project.agent;
    await withPage('offline', DESKTOP, async (page, _rec, context) => {
      await page.goto(host.url(embed(host, project)));
      await openWidget(page);
      await sendText(page, 'Before the cut');
      await waitMessage(page, 'Before the cut', { state: 'sent' });
      await waitConnected(page);
      const conv = await ag.waitConversation();

      await context.setOffline(true);
      await ag.send(conv.id, 'Agent while offline 1');
      await ag.send(conv.id, 'Agent while offline 2');
      await sendText(page, 'Visitor while offline');
      await assertQueued(page, 'Visitor while offline');

      await context.setOffline(false);
      await waitMessage(page, 'Visitor while offline', { state: 'sent', timeout: 15_000 });
      await waitMessage(page, 'Agent while offline 1', { mine: false, timeout: 15_000 });
      await waitMessage(page, 'Agent while offline 2', { mine: false, timeout: 15_000 });

      await assertNoLossNoDuplicate(page, ag, conv.id, ['Agent while offline 1', 'Agent while offline 2', 'Visitor while offline']);
    });
  });

  test('network cut (the proxy drops every TCP connection): reconnects and resumes', { timeout: TEST_TIMEOUT }, async () => {
    const project = await newProject();
    const ag = project.agent;
    const proxy = await tcpProxy(server.port);
    try {
      await withPage('tcp-cut', DESKTOP, async (page) => {
        await page.goto(host.url(embed(host, project, { base: proxy.base })));
        await openWidget(page);
        await sendText(page, 'Before the drop');
        await waitMessage(page, 'Before the drop', { state: 'sent' });
        await waitConnected(page);
        const conv = await ag.waitConversation();

        await proxy.cut(); // established sockets reset, new connections refused
        await waitFor(async () => (await widgetState(page))?.connected === false, {
          what: 'the widget to notice the dropped socket',
        });
        await ag.send(conv.id, 'Agent during the drop 1');
        await ag.send(conv.id, 'Agent during the drop 2');
        await sendText(page, 'Visitor during the drop');
        await assertQueued(page, 'Visitor during the drop');

        // No `online` event tells the widget the server is back: it finds out with its next
        // attempt, whose delay after n failures is random in [0, min(30 s, 0.5 s × 2^n)]
        // (docs/widget.md); after this ~4 s outage that can be 16 s or more. Hence the cap.
        await proxy.restore();
        await waitMessage(page, 'Visitor during the drop', { state: 'sent', timeout: BACKOFF_CAP });
        await waitMessage(page, 'Agent during the drop 1', { mine: false, timeout: 15_000 });
        await waitMessage(page, 'Agent during the drop 2', { mine: false, timeout: 15_000 });
        await waitConnected(page, 15_000);

        await assertNoLossNoDuplicate(page, ag, conv.id, [
          'Agent during the drop 1',
          'Agent during the drop 2',
          'Visitor during the drop',
        ]);
      });
    } finally {
      await proxy.close();
    }
  });

  test('lost acknowledgement: the message reached the server, the answer did not; resent once, shown once', { timeout: TEST_TIMEOUT }, async () => {
    const project = await newProject();
    const ag = project.agent;
    const proxy = await tcpProxy(server.port);
    try {
      await withPage('lost-ack', DESKTOP, async (page) => {
        await page.goto(host.url(embed(host, project, { base: proxy.base })));
        await openWidget(page);
        await sendText(page, 'Before the black hole');
        await waitMessage(page, 'Before the black hole', { state: 'sent' });
        await waitConnected(page);
        const conv = await ag.waitConversation();

        proxy.blackhole(); // what the widget sends arrives; nothing comes back
        await sendText(page, 'My ack gets lost');
        await waitFor(async () => (await ag.messages(conv.id)).some((m) => m.text === 'My ack gets lost'), {
          what: 'the server to store the message',
        });
        await ag.send(conv.id, 'Agent reply the widget cannot see yet');
        await sleep(500);
        assert.equal((await domMessageWith(page, 'My ack gets lost'))?.state, 'sending', 'no ack yet: still sending');

        await proxy.cut();
        await sleep(1_000);
        await proxy.restore();
        await waitMessage(page, 'My ack gets lost', { state: 'sent', timeout: BACKOFF_CAP });
        await waitMessage(page, 'Agent reply the widget cannot see yet', { mine: false, timeout: 15_000 });
        await assertNoLossNoDuplicate(page, ag, conv.id, ['My ack gets lost', 'Agent reply the widget cannot see yet']);
      });
    } finally {
      await proxy.close();
    }
  });

  test('origin not in the allow-list (and a look-alike): no widget, no socket, init refused', { timeout: TEST_TIMEOUT }, async () => {
    const project = await newProject({ allowed_origins: [host.origin] });

    // Control: the allowed origin gets the widget (so the refusals below are not vacuous).
    await withPage('origin-allowed', DESKTOP, async (page) => {
      await page.goto(host.url(embed(host, project)));
      await launcher(page).waitFor({ state: 'visible', timeout: 10_000 });
    });

    // Another port.
    await withPage('origin-foreign', DESKTOP, async (page, rec) => {
      const { initResponses, initFailures } = await assertRefused(page, rec, foreign.url(embed(foreign, project)));
      console.log(`# foreign origin ${foreign.origin}: init responses ${JSON.stringify(initResponses)}, failures ${JSON.stringify(initFailures)}`);
    });
    const fromForeign = await serverInitFromOrigin(project, foreign.origin);
    assert.equal(fromForeign.status, 403, `server init from the foreign origin: ${JSON.stringify(fromForeign)}`);
    assert.equal(fromForeign.body?.error?.code, 'forbidden');
    assert.equal(fromForeign.preflightAllowOrigin, null, 'no CORS header on a refused preflight: the JSON request is never sent');
    // The refusal itself is readable (it holds only its reason), so the widget can tell the tenant.
    assert.match(fromForeign.body?.error?.message, /not in the allowed origins/);
    assert.ok(!JSON.stringify(fromForeign.body).includes(host.origin), 'the refusal does not list the allowed origins');

    // Look-alike: http://localhost:<allowed port> when only http://127.0.0.1:<port> is allowed.
    await withPage('origin-lookalike', DESKTOP, async (page, rec) => {
      const path = embed(host, project);
      const { initResponses, initFailures } = await assertRefused(page, rec, host.url(path, 'localhost'));
      assert.equal(await page.evaluate(() => location.origin), `http://localhost:${host.port}`);
      console.log(`# look-alike origin http://localhost:${host.port}: init responses ${JSON.stringify(initResponses)}, failures ${JSON.stringify(initFailures)}`);
    });
    const fromLookalike = await serverInitFromOrigin(project, `http://localhost:${host.port}`);
    assert.equal(fromLookalike.status, 403, `server init from the look-alike: ${JSON.stringify(fromLookalike)}`);
    assert.equal(fromLookalike.preflightAllowOrigin, null);
  });

  test('identity verification enforced: wrong or missing user_hash refused with a clear state, correct one works', { timeout: TEST_TIMEOUT }, async () => {
    const project = await newProject({ identity_verification: 'enforce' });
    const secret = project.widget.identity_secret;
    assert.ok(secret, 'the Admin API shows the identity secret');
    const identifier = `user-${uid()}`;
    const person = { identifier, name: 'Jane Roe', email: 'jane@example.com' };

    const cases = [
      ['identity-wrong', { ...person, user_hash: userHash('not-the-identity-secret', identifier) }, /user_hash is not/],
      ['identity-missing', person, /user_hash \(or user\.user_jwt\) is missing/],
    ];
    for (const [name, user, cause] of cases) {
      await withPage(name, DESKTOP, async (page, rec) => {
        // The page's own "Chat with us" button calls LaraChat.open().
        const chatButton = '<p><a id="chat-with-us" href="#" onclick="LaraChat.open(); return false">Chat with us</a></p>';
        await page.goto(host.url(embed(host, project, { user, body: chatButton })));
        await launcher(page).waitFor({ state: 'visible', timeout: 10_000 });
        const initStatuses = rec.responses.filter((r) => isInitUrl(r.url) && r.method === 'POST').map((r) => r.status);
        assert.deepEqual(initStatuses, [403], 'init is refused once (not retried: retrying cannot help)');
        await page.locator('#chat-with-us').click();
        await panel(page).waitFor({ state: 'visible', timeout: 10_000 });
        const notice = page.locator('[data-lc=error]');
        await notice.waitFor({ state: 'visible', timeout: 10_000 });
        assert.match(await notice.textContent(), /unavailable/i);
        assert.equal(await page.locator('[data-lc=input]').isVisible(), false, 'no composer: nothing could be sent');
        assert.equal(await page.locator('[data-lc=status]').textContent(), 'Unavailable');
        assert.deepEqual(rec.websockets, [], 'no socket without a session');
        const errors = rec.console.filter((l) => l.startsWith('error:') && l.includes('[LaraChat]'));
        assert.ok(
          errors.some((l) => /identity verification failed/.test(l) && cause.test(l)),
          `the console names the cause for the tenant: ${JSON.stringify(rec.console)}`,
        );
        await page.screenshot({ path: join(artifactsDir, `${name}.png`) });
        await page.keyboard.press('Escape');
        await panel(page).waitFor({ state: 'hidden', timeout: 10_000 });
      });
    }

    await withPage('identity-correct', DESKTOP, async (page) => {
      const user = { ...person, user_hash: userHash(secret, identifier) };
      await page.goto(host.url(embed(host, project, { user })));
      await openWidget(page);
      await sendText(page, 'I am Jane');
      await waitMessage(page, 'I am Jane', { state: 'sent' });
      const conv = await project.agent.waitConversation();
      const msg = (await project.agent.messages(conv.id)).find((m) => m.text === 'I am Jane');
      assert.equal(msg.sender.type, 'end_user');
      const endUser = await project.agent.user(msg.sender.id);
      assert.equal(endUser.user_identifier, identifier);
      assert.equal(endUser.name, 'Jane Roe');
      assert.equal(endUser.email, 'jane@example.com');
      assert.equal(endUser.is_anonymous, false);
      assert.equal((await widgetState(page))?.userId, endUser.id);
    });
  });

  test('mobile (375×740): full-screen panel; desktop, dark, left, French; screenshots', { timeout: TEST_TIMEOUT }, async () => {
    const project = await newProject();
    const ag = project.agent;

    await withPage('mobile', { viewport: { width: 375, height: 740 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 }, async (page) => {
      await page.goto(host.url(embed(host, project)));
      await launcher(page).waitFor({ state: 'visible', timeout: 10_000 });
      await page.screenshot({ path: join(artifactsDir, 'mobile-closed.png') });
      await openWidget(page, { tap: true });
      await sendText(page, 'Hi from my phone');
      await waitMessage(page, 'Hi from my phone', { state: 'sent' });
      const conv = await ag.waitConversation();
      await ag.send(conv.id, 'Hello! Ana here. What can I do for you?');
      await waitMessage(page, 'Hello! Ana here.', { mine: false });
      await settle(page);
      const box = await panel(page).boundingBox();
      await page.screenshot({ path: join(artifactsDir, 'mobile.png') });
      console.log(`# mobile panel box: ${JSON.stringify(box)}`);
      assert.ok(box, 'the panel has a box');
      assert.ok(box.x <= 1 && box.y <= 1, `the panel starts at the corner: ${JSON.stringify(box)}`);
      assert.ok(box.width >= 375 - 1 && box.height >= 740 - 1, `the panel covers the viewport: ${JSON.stringify(box)}`);
    });

    await withPage('desktop', DESKTOP, async (page) => {
      await page.goto(host.url(embed(host, project)));
      await launcher(page).waitFor({ state: 'visible', timeout: 10_000 });
      await page.screenshot({ path: join(artifactsDir, 'desktop-closed.png') });
      await openWidget(page);
      await settle(page);
      await page.screenshot({ path: join(artifactsDir, 'desktop-empty.png') });
      await sendText(page, 'And hello from my laptop');
      await waitMessage(page, 'And hello from my laptop', { state: 'sent' });
      const conv = await ag.waitConversation();
      await ag.typing(conv.id, 'start');
      await page.locator('[data-lc=typing]').waitFor({ state: 'visible', timeout: 10_000 });
      await settle(page);
      await page.screenshot({ path: join(artifactsDir, 'desktop-open.png') });
      const box = await panel(page).boundingBox();
      console.log(`# desktop panel box: ${JSON.stringify(box)}`);
      assert.ok(box.width < 1280 && box.height < 800, 'on a desktop the panel is not full-screen');
    });

    // The page's settings win over the project's (light, bottom-right, no locale).
    await withPage('desktop-dark', DESKTOP, async (page) => {
      const settings = { position: 'bottom-left', theme: 'dark', locale: 'fr' };
      await page.goto(host.url(embed(host, project, { settings })));
      await openWidget(page);
      await settle(page);
      await page.screenshot({ path: join(artifactsDir, 'desktop-dark-left-fr.png') });
      const lb = await launcher(page).boundingBox();
      const pb = await panel(page).boundingBox();
      assert.ok(lb.x < 640 && pb.x < 640, `bottom-left: launcher ${JSON.stringify(lb)}, panel ${JSON.stringify(pb)}`);
      assert.equal(await page.locator('[data-lc=input]').getAttribute('placeholder'), 'Écrivez un message…');
      const luminance = await panel(page).evaluate((el) => {
        // The first opaque background from the message list up.
        for (let n = el.querySelector('[data-lc=messages]') || el; n; n = n.parentElement) {
          const m = getComputedStyle(n).backgroundColor.match(/[\d.]+/g);
          if (m && (m.length < 4 || Number(m[3]) > 0.5)) return (0.2126 * m[0] + 0.7152 * m[1] + 0.0722 * m[2]) / 255;
        }
        return null;
      });
      assert.ok(luminance !== null && luminance < 0.4, `dark theme: background luminance ${luminance}`);
    });
  });

  test('unread badge: counts agent messages while closed, clears on open', { timeout: TEST_TIMEOUT }, async () => {
    const project = await newProject();
    const ag = project.agent;
    await withPage('badge', DESKTOP, async (page) => {
      await page.goto(host.url(embed(host, project)));
      await openWidget(page);
      await sendText(page, 'Anyone there?');
      await waitMessage(page, 'Anyone there?', { state: 'sent' });
      await page.locator('[data-lc=close]').click();
      await panel(page).waitFor({ state: 'hidden', timeout: 10_000 });
      const badge = page.locator('[data-lc=badge]');
      assert.equal(await badge.isVisible(), false, 'no badge without unread messages');
      const conv = await ag.waitConversation();
      await ag.send(conv.id, 'Yes, Ana here');
      await ag.send(conv.id, 'How can I help?');
      await waitFor(async () => (await badge.isVisible()) && (await badge.textContent()).trim() === '2', {
        what: 'the badge to show 2',
      });
      await launcher(page).click();
      await panel(page).waitFor({ state: 'visible', timeout: 10_000 });
      await badge.waitFor({ state: 'hidden', timeout: 10_000 });
    });
  });

  test('keyboard and screen readers: Enter opens and sends, Shift+Enter new line, Esc closes to the launcher', { timeout: TEST_TIMEOUT }, async () => {
    const project = await newProject();
    await withPage('keyboard', DESKTOP, async (page) => {
      await page.goto(host.url(embed(host, project)));
      await launcher(page).waitFor({ state: 'visible', timeout: 10_000 });
      const label = (await launcher(page).getAttribute('aria-label')) || (await launcher(page).textContent()) || '';
      assert.ok(label.trim(), 'the launcher has an accessible name');
      assert.equal(await launcher(page).evaluate((el) => el.tagName), 'BUTTON', 'the launcher is a real button');

      await launcher(page).focus();
      await page.keyboard.press('Enter');
      await panel(page).waitFor({ state: 'visible', timeout: 10_000 });
      const input = page.locator('[data-lc=input]');
      await waitFor(() => input.evaluate((el) => el.getRootNode().activeElement === el), { what: 'the composer to have focus on open' });
      assert.ok(await page.locator('[data-lc=messages]').getAttribute('aria-live'), 'the message list is aria-live');

      await page.keyboard.type('first line');
      await page.keyboard.press('Shift+Enter');
      await page.keyboard.type('second line');
      assert.equal(await input.inputValue(), 'first line\nsecond line', 'Shift+Enter adds a line, does not send');
      assert.equal(await page.locator('[data-lc=message]').count(), 0);
      await page.keyboard.press('Enter');
      await waitMessage(page, 'second line', { state: 'sent', mine: true });
      assert.equal(await input.inputValue(), '', 'the composer is emptied after sending');
      const conv = await project.agent.waitConversation();
      assert.equal((await project.agent.messages(conv.id))[0].text, 'first line\nsecond line');

      await page.keyboard.press('Escape');
      await panel(page).waitFor({ state: 'hidden', timeout: 10_000 });
      await waitFor(() => launcher(page).evaluate((el) => el.getRootNode().activeElement === el), {
        what: 'focus back on the launcher after Esc',
      });
    });
  });

  test('history: older pages load when scrolled to the top, in order, without duplicates', { timeout: TEST_TIMEOUT }, async () => {
    const project = await newProject();
    const ag = project.agent;
    await withPage('history', DESKTOP, async (page) => {
      await page.goto(host.url(embed(host, project)));
      await openWidget(page);
      await sendText(page, 'Message 000 from the visitor');
      await waitMessage(page, 'Message 000 from the visitor', { state: 'sent' });
      const conv = await ag.waitConversation();
      for (let i = 1; i <= 100; i++) await ag.send(conv.id, `Message ${String(i).padStart(3, '0')} from Ana`);
      const serverIds = (await ag.messages(conv.id)).map((m) => m.id);
      assert.equal(serverIds.length, 101);

      await page.reload();
      await openWidget(page);
      await waitMessage(page, 'Message 100 from Ana', { mine: false });
      const firstPage = (await domMessages(page)).length;
      assert.ok(firstPage < 101, `the first page is not the whole history (${firstPage} shown)`);
      const list = page.locator('[data-lc=messages]');
      const ids = await waitFor(
        async () => {
          await list.evaluate((el) => {
            el.scrollTop = 0;
          });
          const shown = (await domMessages(page)).map((m) => m.id);
          return shown.length >= 101 && shown;
        },
        { timeout: 20_000, interval: 300, what: 'the whole history after scrolling to the top' },
      );
      console.log(`# history: first page ${firstPage} messages, then all ${ids.length} after scrolling up`);
      assert.deepEqual(ids, serverIds, 'the whole history, in order, each message once');
    });
  });

  test('time to usable (reported, not asserted)', { timeout: TEST_TIMEOUT }, async () => {
    const project = await newProject();
    const sizes = {};
    for (const f of ['loader.js', 'widget.js']) {
      const body = Buffer.from(await (await fetch(`${server.base}/widget/${f}`)).arrayBuffer());
      sizes[f] = { bytes: body.length, gzip: gzipSync(body, { level: 9 }).length };
    }
    console.log(`# script sizes: ${JSON.stringify(sizes)}`);
    const runs = [];
    for (let i = 0; i < 3; i++) {
      await withPage(`timing-${i}`, DESKTOP, async (page) => {
        // From the first script of the page on, an animation-frame loop records (as
        // performance.now(), i.e. ms since navigation start) when the launcher is first visible,
        // when it first receives a click at its centre (hit-testing through the shadow root),
        // when the widget is first connected, and, after the click, when the panel is visible.
        await page.addInitScript(() => {
          const marks = (window.__lcMarks = {});
          const root = () => document.getElementById('larachat-widget')?.shadowRoot;
          const shown = (el) => !!el && el.getClientRects().length > 0 && el.checkVisibility?.({ opacityProperty: true, visibilityProperty: true }) !== false;
          window.addEventListener('click', () => { if (marks.click === undefined) marks.click = performance.now(); }, true);
          const tick = () => {
            const now = performance.now();
            const r = root();
            const launcher = r?.querySelector('[data-lc=launcher]');
            if (marks.launcherVisible === undefined && shown(launcher)) marks.launcherVisible = now;
            if (marks.launcherHittable === undefined && shown(launcher) && !launcher.disabled) {
              const b = launcher.getBoundingClientRect();
              const hit = r.elementFromPoint(b.x + b.width / 2, b.y + b.height / 2);
              if (hit && (hit === launcher || launcher.contains(hit))) marks.launcherHittable = now;
            }
            if (marks.connected === undefined && window.LaraChat?._state?.().connected === true) marks.connected = now;
            if (marks.click !== undefined && marks.panelVisible === undefined && shown(r?.querySelector('[data-lc=panel]'))) {
              marks.panelVisible = now;
              marks.inputFocused = r.activeElement?.getAttribute('data-lc') === 'input';
            }
            if (marks.panelVisible === undefined || marks.connected === undefined) requestAnimationFrame(tick);
          };
          requestAnimationFrame(tick);
        });
        await page.goto(host.url(embed(host, project)), { waitUntil: 'commit' });
        await page.waitForFunction(() => window.__lcMarks?.launcherHittable !== undefined, null, { timeout: 10_000, polling: 50 });
        await launcher(page).click();
        await page.waitForFunction(() => window.__lcMarks?.panelVisible !== undefined, null, { timeout: 10_000, polling: 50 });
        await waitConnected(page);
        await page.waitForFunction(() => window.__lcMarks?.connected !== undefined, null, { timeout: 10_000, polling: 50 });
        const marks = await page.evaluate(() => window.__lcMarks);
        const nav = await page.evaluate(() => {
          const n = performance.getEntriesByType('navigation')[0];
          const res = Object.fromEntries(
            performance
              .getEntriesByType('resource')
              .filter((r) => r.name.includes('/widget/'))
              .map((r) => [new URL(r.name).pathname, { start: Math.round(r.startTime), ms: Math.round(r.duration) }]),
          );
          return { domContentLoaded: Math.round(n.domContentLoadedEventEnd), load: Math.round(n.loadEventEnd), res };
        });
        runs.push({
          launcherVisible: Math.round(marks.launcherVisible),
          launcherClickable: Math.round(marks.launcherHittable),
          connected: Math.round(marks.connected),
          clickToPanel: Math.round(marks.panelVisible - marks.click),
          inputFocusedOnOpen: marks.inputFocused,
          ...nav,
        });
      });
    }
    const median = (k) => runs.map((r) => r[k]).sort((a, b) => a - b)[Math.floor(runs.length / 2)];
    for (const [i, r] of runs.entries()) console.log(`# time-to-usable run ${i + 1} (ms since navigation start): ${JSON.stringify(r)}`);
    console.log(
      `# time-to-usable, median of ${runs.length} cold runs (host page + debug larachat on loopback): launcher visible ${median('launcherVisible')} ms, ` +
        `clickable ${median('launcherClickable')} ms, connected ${median('connected')} ms after navigation start; ` +
        `click → open panel ${median('clickToPanel')} ms; DOMContentLoaded ${median('domContentLoaded')} ms, load ${median('load')} ms`,
    );
  });
});

describe('issue 13: widget defects', { timeout: 10 * 60_000 }, () => {
  test('1. the first init fails (server unreachable): retried with back-off, then open() works', { timeout: TEST_TIMEOUT }, async () => {
    const project = await newProject();
    const proxy = await tcpProxy(server.port);
    try {
      await proxy.cut(); // the server is "restarting": connections refused
      // widget.js comes from the server directly; its API base is the proxy (the stub's base).
      const path = `/d-${uid()}.html`;
      const config = { apiKey: project.publishableKey, settings: { theme: 'light', locale: 'en' } };
      host.page(
        path,
        `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Acme</title>
<script>window.LaraChatConfig = ${JSON.stringify(config)}; window.LaraChat = { q: [], base: ${JSON.stringify(proxy.base)} };</script>
<script src="${server.base}/widget/widget.js" async></script></head>
<body><button id="chat-with-us" onclick="LaraChat.open()">Chat with us</button></body></html>`,
      );
      await withPage('init-retry', DESKTOP, async (page, rec) => {
        await page.goto(host.url(path));
        const initFailures = () => rec.failures.filter((r) => isInitUrl(r.url) && r.method === 'POST');
        await waitFor(() => initFailures().length >= 3, { timeout: 20_000, what: 'several failed init attempts' });
        const w = await noWidget(page);
        assert.ok(w.absent, `no widget while the server is away: ${JSON.stringify(w)}`);
        await page.locator('#chat-with-us').click(); // before the widget could start
        await proxy.restore();
        await panel(page).waitFor({ state: 'visible', timeout: BACKOFF_CAP });
        const initOk = rec.responses.filter((r) => isInitUrl(r.url) && r.method === 'POST' && r.status === 200);
        assert.equal(initOk.length, 1, 'one successful init');
        await sendText(page, 'Back online');
        await waitMessage(page, 'Back online', { state: 'sent' });
        console.log(`# init retry: ${initFailures().length} failed init requests (with their probes) before the server came back`);
      });
    } finally {
      await proxy.close();
    }
  });

  test('2. byte limit: 9,000 "é" / 7,000 emoji are stopped in the composer; a refused send shows the reason, no Retry', { timeout: TEST_TIMEOUT }, async () => {
    const project = await newProject();
    const ag = project.agent;
    await withPage('byte-limit', DESKTOP, async (page) => {
      await page.goto(host.url(embed(host, project)));
      await openWidget(page);
      const input = page.locator('[data-lc=input]');
      const hint = page.locator('[data-lc=limit]');
      for (const text of ['é'.repeat(9000), '😀'.repeat(7000)]) {
        await input.fill(text);
        await hint.waitFor({ state: 'visible', timeout: 5_000 });
        assert.match(await hint.textContent(), /too long: remove about \d+ characters/);
        assert.equal(await input.getAttribute('aria-invalid'), 'true');
        await page.locator('[data-lc=send]').click();
        await input.press('Enter');
        assert.equal(await page.locator('[data-lc=message]').count(), 0, 'nothing is sent');
        assert.equal(await input.inputValue(), text, 'the text stays, to be shortened');
        console.log(`# ${text.length} UTF-16 units of ${text[0]}: hint "${await hint.textContent()}"`);
      }
      assert.deepEqual(await ag.conversations(), [], 'nothing reached the server');
      // Exactly at the limit (16 KiB of UTF-8) is fine.
      const atLimit = 'é'.repeat(8192);
      await input.fill(atLimit);
      await hint.waitFor({ state: 'hidden', timeout: 5_000 });
      await page.locator('[data-lc=send]').click();
      await waitFor(async () => (await page.locator('[data-lc=message][data-state=sent]').count()) === 1, { what: 'the message at the limit to be sent' });
      const conv = await ag.waitConversation();
      assert.equal((await ag.messages(conv.id))[0].text, atLimit);
    });

    // A server that does not announce its limit (an older gateway): the server's refusal is
    // shown with its reason, over HTTP (first message) and over the socket, without Retry.
    await withPage('byte-limit-server-reason', DESKTOP, async (page) => {
      await page.route((url) => url.pathname === '/widget/v1/init', async (route) => {
        if (route.request().method() !== 'POST') return route.continue();
        const response = await route.fetch();
        const json = await response.json();
        delete json.limits;
        return route.fulfill({ response, json });
      });
      await page.goto(host.url(embed(host, project)));
      await openWidget(page);
      const failedWithReason = async (text) => {
        await sendText(page, text);
        const m = await waitFor(
          async () => {
            const el = page.locator('[data-lc=message][data-state=failed]').last();
            return (await el.count()) && (await el.locator('[data-lc=reason]').count()) ? el : null;
          },
          { what: 'a failed message with its reason' },
        );
        const reason = await m.locator('[data-lc=reason]').textContent();
        assert.match(reason, /at most 16384 bytes/);
        assert.equal(await m.locator('[data-lc=retry]').count(), 0, 'no Retry for a refusal that cannot succeed');
        return reason;
      };
      const httpReason = await failedWithReason('😀'.repeat(7000));
      await sendText(page, 'a short one');
      await waitMessage(page, 'a short one', { state: 'sent' });
      await waitConnected(page);
      const wsReason = await failedWithReason('é'.repeat(9000));
      console.log(`# refused sends: HTTP "${httpReason}", socket "${wsReason}"`);
    });
  });

  test('3. allowed origins are normalised (case, default port, trailing slash, IDN); a refused origin says why in the console', { timeout: TEST_TIMEOUT }, async () => {
    const typed = `HTTP://LocalHost:${host.port}/`;
    const idn = `http://BÜCHER.test:${host.port}`;
    const project = await newProject({ allowed_origins: [typed, idn, 'https://acme.com:443'] });
    assert.deepEqual(
      project.widget.allowed_origins,
      [`http://localhost:${host.port}`, `http://xn--bcher-kva.test:${host.port}`, 'https://acme.com'],
      'stored as browsers send them',
    );
    await withPage('origin-normalised', DESKTOP, async (page) => {
      await page.goto(host.url(embed(host, project), 'localhost'));
      await openWidget(page);
      await sendText(page, 'from localhost');
      await waitMessage(page, 'from localhost', { state: 'sent' });
    });
    // An IDN host: Chromium sends its punycode origin.
    const idnBrowser = await launchBrowser(['--host-resolver-rules=MAP xn--bcher-kva.test 127.0.0.1']);
    try {
      const context = await idnBrowser.newContext(DESKTOP);
      const page = await context.newPage();
      await page.goto(`http://bücher.test:${host.port}${embed(host, project)}`);
      assert.equal(await page.evaluate(() => location.origin), `http://xn--bcher-kva.test:${host.port}`);
      await openWidget(page);
      await sendText(page, 'from an IDN host');
      await waitMessage(page, 'from an IDN host', { state: 'sent' });
      await context.close();
    } finally {
      await idnBrowser.close();
    }
    // 127.0.0.1 is not in this list: nothing shown, and the console says why.
    await withPage('origin-refused-reason', DESKTOP, async (page, rec) => {
      await assertRefused(page, rec, host.url(embed(host, project)));
      await waitFor(() => rec.console.some((l) => l.startsWith('error:') && l.includes('[LaraChat]')), { what: 'a console error' });
      const line = rec.console.find((l) => l.startsWith('error:') && l.includes('[LaraChat]'));
      assert.match(line, new RegExp(`origin http://127\\.0\\.0\\.1:${host.port} is not in the allowed origins`));
      console.log(`# refused origin, console: ${line}`);
    });
  });

  test('5. theme "auto" is accepted by the Admin API and follows prefers-color-scheme', { timeout: TEST_TIMEOUT }, async () => {
    const project = await newProject({ theme: 'auto' });
    assert.equal(project.widget.theme, 'auto');
    for (const colorScheme of ['dark', 'light']) {
      await withPage(`theme-auto-${colorScheme}`, { ...DESKTOP, colorScheme }, async (page) => {
        await page.goto(host.url(embed(host, project, { settings: { locale: 'en' } })));
        await openWidget(page);
        const cls = await page.locator('[data-lc=panel]').evaluate((el) => el.parentElement.className);
        assert.ok(cls.split(' ').includes(colorScheme), `${colorScheme} scheme: root classes "${cls}"`);
      });
    }
  });

  test('6. safe links; a conversation closed by the agent is shown closed, a new one starts on purpose', { timeout: TEST_TIMEOUT }, async () => {
    const project = await newProject();
    const ag = project.agent;
    await withPage('links-closed', DESKTOP, async (page) => {
      await page.goto(host.url(embed(host, project)));
      await openWidget(page);
      await sendText(page, 'Where are the docs?');
      await waitMessage(page, 'Where are the docs?', { state: 'sent' });
      const conv = await ag.waitConversation();
      const text =
        'See https://example.com/docs?a=1&b=2. Or (https://example.com/wiki/Foo_(bar)), mail mailto:help@acme.test, ' +
        'not javascript:alert(1) nor <a href="javascript:alert(2)">x</a> <img src=x onerror=alert(3)> data:text/html,hi';
      await ag.send(conv.id, text);
      const msg = await waitMessage(page, 'See https://example.com/docs', { mine: false });
      const el = page.locator(`[data-lc=message][data-id="${msg.id}"]`);
      const links = await el.locator('a').evaluateAll((as) =>
        as.map((a) => ({ href: a.getAttribute('href'), text: a.textContent, rel: a.getAttribute('rel'), target: a.getAttribute('target') })),
      );
      const rel = 'noopener noreferrer nofollow';
      assert.deepEqual(links, [
        { href: 'https://example.com/docs?a=1&b=2', text: 'https://example.com/docs?a=1&b=2', rel, target: '_blank' },
        { href: 'https://example.com/wiki/Foo_(bar)', text: 'https://example.com/wiki/Foo_(bar)', rel, target: '_blank' },
        { href: 'mailto:help@acme.test', text: 'mailto:help@acme.test', rel, target: '_blank' },
      ]);
      assert.equal(await el.locator('img').count(), 0, 'no HTML from message text');
      assert.equal((await el.locator('.bubble').textContent()), text, 'the text is shown as sent');

      // The agent closes the conversation.
      await ag.close(conv.id);
      const closed = page.locator('[data-lc=closed]');
      await closed.waitFor({ state: 'visible', timeout: 10_000 });
      assert.match(await closed.textContent(), /closed/);
      assert.equal(await page.locator('[data-lc=input]').isVisible(), false, 'no composer in a closed conversation');
      // After a reload: the same closed conversation, its history, the same state.
      await page.reload();
      await launcher(page).waitFor({ state: 'visible', timeout: 10_000 });
      await launcher(page).click();
      await panel(page).waitFor({ state: 'visible', timeout: 10_000 });
      await closed.waitFor({ state: 'visible', timeout: 10_000 });
      await waitMessage(page, 'Where are the docs?', { state: 'sent' });
      assert.equal(await page.locator('[data-lc=input]').isVisible(), false);
      await page.screenshot({ path: join(artifactsDir, 'desktop-closed-conversation.png') });
      // Starting a new one is explicit.
      await page.locator('[data-lc=new-conversation]').click();
      await page.locator('[data-lc=input]').waitFor({ state: 'visible', timeout: 10_000 });
      assert.equal(await page.locator('[data-lc=message]').count(), 0, 'a new conversation starts empty');
      await sendText(page, 'A new question');
      await waitMessage(page, 'A new question', { state: 'sent' });
      const convs = await ag.conversations();
      assert.equal(convs.length, 2, 'a second conversation');
      const fresh = convs.find((c) => c.id !== conv.id);
      assert.equal(fresh.status, 'open');
      assert.deepEqual((await ag.messages(fresh.id)).map((m) => m.text), ['A new question']);
      assert.ok(!(await ag.messages(conv.id)).some((m) => m.text === 'A new question'), 'nothing added to the closed one');
    });
  });

  test('8. identify() after chatting anonymously keeps the conversation (carried over to the identified user)', { timeout: TEST_TIMEOUT }, async () => {
    const project = await newProject({ identity_verification: 'enforce' });
    const ag = project.agent;
    const identifier = `user-${uid()}`;
    const jane = { identifier, name: 'Jane Roe', user_hash: userHash(project.widget.identity_secret, identifier) };
    await withPage('identify-carry-over', DESKTOP, async (page) => {
      await page.goto(host.url(embed(host, project)));
      await openWidget(page);
      await sendText(page, 'Question before logging in');
      await waitMessage(page, 'Question before logging in', { state: 'sent' });
      const conv = await ag.waitConversation();
      await ag.send(conv.id, 'Answer before logging in');
      await waitMessage(page, 'Answer before logging in', { mine: false });
      const before = await domMessages(page);
      const visitorId = (await widgetState(page)).userId;

      await page.evaluate((u) => window.LaraChat.identify(u), jane);
      await waitFor(async () => (await widgetState(page))?.userId !== visitorId, { what: 'the identified session' });
      const after = await waitFor(
        async () => {
          const shown = await domMessages(page);
          return shown.length >= 2 && shown;
        },
        { what: 'the history after identify()' },
      );
      assert.deepEqual(
        after.map((m) => [m.id, m.mine]),
        before.map((m) => [m.id, m.mine]),
        "the same messages, the visitor's still shown as the user's own",
      );
      await waitConnected(page);
      await sendText(page, 'Now logged in');
      await waitMessage(page, 'Now logged in', { state: 'sent', mine: true });
      assert.equal((await ag.conversations()).length, 1, 'still one conversation');
      const last = (await ag.messages(conv.id)).at(-1);
      assert.equal(last.text, 'Now logged in');
      assert.equal((await ag.user(last.sender.id)).user_identifier, identifier);
      assert.equal(
        await page.evaluate((k) => localStorage.getItem(k), `larachat:${project.publishableKey}:visitor`),
        '',
        'the visitor token is forgotten: a later anonymous visit here starts afresh',
      );

      // A reload as Jane (the page now sets the user): the same history, the same sides.
      const path = embed(host, project, { user: jane });
      await page.goto(host.url(path));
      await openWidget(page);
      await waitMessage(page, 'Now logged in', { state: 'sent', mine: true });
      const reloaded = await domMessages(page);
      assert.deepEqual(
        reloaded.map((m) => [m.text.includes('Question before logging in'), m.mine]).filter(([q]) => q),
        [[true, 'true']],
      );
    });
  });

  test('8b. after identify() the visitor switches between the identified user\'s conversations', { timeout: TEST_TIMEOUT }, async () => {
    const project = await newProject({ identity_verification: 'enforce' });
    const ag = project.agent;
    const identifier = `user-${uid()}`;
    const jane = { identifier, name: 'Jane Roe', user_hash: userHash(project.widget.identity_secret, identifier) };
    // Jane already has an open conversation (from another device), answered.
    const api = async (method, path, body) => {
      const res = await fetch(`${server.base}/api/v1${path}`, {
        method,
        headers: { authorization: `Bearer ${project.secretKey}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
      assert.ok(res.ok, `${method} ${path}: ${res.status}`);
      return res.json();
    };
    const known = (await api('POST', '/users', { user_identifier: identifier, name: 'Jane Roe' })).user;
    const earlier = await api('POST', '/conversations', { subject: 'Order 1234', members: [known.id] });
    await ag.send(earlier.id, 'Your order 1234 has shipped');

    await withPage('identify-switcher', DESKTOP, async (page) => {
      await page.goto(host.url(embed(host, project)));
      await openWidget(page);
      await sendText(page, 'Question before logging in');
      await waitMessage(page, 'Question before logging in', { state: 'sent' });
      const switcher = page.locator('[data-lc=switcher]');
      assert.equal(await switcher.isVisible(), false, 'one conversation: no switcher');

      await page.evaluate((u) => window.LaraChat.identify(u), jane);
      // The carried-over conversation stays shown; the switcher lists both.
      await switcher.waitFor({ state: 'visible', timeout: 10_000 });
      const options = await switcher.locator('option').allTextContents();
      assert.equal(options.length, 2, options.join(' | '));
      assert.ok(options.includes('Order 1234'), options.join(' | '));
      assert.equal(await switcher.getAttribute('aria-label'), 'Your conversations');
      await waitMessage(page, 'Question before logging in', { mine: true });

      // The other conversation: its history, replies and live messages go there.
      await switcher.selectOption({ label: 'Order 1234' });
      await waitMessage(page, 'Your order 1234 has shipped', { mine: false });
      assert.ok(!(await domMessages(page)).some((m) => m.text.includes('Question before logging in')), 'only the chosen conversation');
      await waitConnected(page);
      await sendText(page, 'When will it arrive?');
      await waitMessage(page, 'When will it arrive?', { state: 'sent', mine: true });
      assert.equal((await ag.messages(earlier.id)).at(-1).text, 'When will it arrive?');
      await ag.send(earlier.id, 'Tomorrow');
      await waitMessage(page, 'Tomorrow', { mine: false });
      // And back.
      const carried = (await ag.conversations()).find((c) => c.id !== earlier.id);
      await switcher.selectOption(carried.id);
      await waitMessage(page, 'Question before logging in', { mine: true });
      assert.ok(!(await domMessages(page)).some((m) => m.text.includes('Tomorrow')), 'only the carried-over conversation');
    });
  });

  test('7. mobile: modal dialog with a focus trap, Esc back to the launcher, 16 px input, contrast ≥ 4.5:1', { timeout: TEST_TIMEOUT }, async () => {
    const project = await newProject();
    const MOBILE = { viewport: { width: 375, height: 740 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 };
    for (const theme of ['light', 'dark']) {
      await withPage(`mobile-a11y-${theme}`, MOBILE, async (page) => {
        await page.goto(host.url(embed(host, project, { settings: { theme, locale: 'en' } })));
        await openWidget(page, { tap: true });
        await sendText(page, 'contrast check');
        await waitMessage(page, 'contrast check', { state: 'sent' });
        assert.equal(await panel(page).getAttribute('role'), 'dialog');
        assert.equal(await panel(page).getAttribute('aria-modal'), 'true');
        const fontSize = await page.locator('[data-lc=input]').evaluate((el) => parseFloat(getComputedStyle(el).fontSize));
        assert.ok(fontSize >= 16, `input font-size ${fontSize}px (iOS zooms below 16 px)`);

        const inPanel = () =>
          page.evaluate(() => {
            const root = document.getElementById('larachat-widget')?.shadowRoot;
            const a = root?.activeElement;
            return !!a && !!root.querySelector('[data-lc=panel]').contains(a) && document.activeElement?.id === 'larachat-widget';
          });
        for (const key of ['Tab', 'Shift+Tab']) {
          for (let i = 0; i < 12; i++) {
            await page.keyboard.press(key);
            assert.ok(await inPanel(), `${key} ×${i + 1}: focus stays in the dialog`);
          }
        }
        await page.keyboard.press('Escape');
        await panel(page).waitFor({ state: 'hidden', timeout: 10_000 });
        await waitFor(() => launcher(page).evaluate((el) => el.getRootNode().activeElement === el), { what: 'focus back on the launcher' });
        await launcher(page).click();
        await panel(page).waitFor({ state: 'visible', timeout: 10_000 });

        const ratios = await page.evaluate(() => {
          const root = document.getElementById('larachat-widget').shadowRoot;
          const rgba = (c) => {
            const m = (c.match(/[\d.]+/g) || []).map(Number);
            return { r: m[0], g: m[1], b: m[2], a: m.length > 3 ? m[3] : 1 };
          };
          const over = (fg, bg) => ({
            r: fg.r * fg.a + bg.r * (1 - fg.a),
            g: fg.g * fg.a + bg.g * (1 - fg.a),
            b: fg.b * fg.a + bg.b * (1 - fg.a),
            a: 1,
          });
          const up = (n) => n.parentElement || (n.getRootNode() instanceof ShadowRoot ? n.getRootNode().host : null);
          const lum = (c) => {
            const f = (v) => ((v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
            return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
          };
          const contrast = (el) => {
            // The backdrop: backgrounds from the first opaque one down; opacity of the text's ancestors.
            const layers = [];
            let opacity = 1;
            let n = el;
            for (; n; n = up(n)) {
              const cs = getComputedStyle(n);
              layers.push(rgba(cs.backgroundColor));
              if (layers.at(-1).a >= 1) break;
            }
            // Opacity up to and including the element painting the backdrop fades the text into it.
            for (let o = el; o; o = up(o)) {
              opacity *= Number(getComputedStyle(o).opacity);
              if (o === n) break;
            }
            let bg = { r: 255, g: 255, b: 255, a: 1 };
            for (const l of layers.reverse()) bg = over(l, bg);
            const fg0 = rgba(getComputedStyle(el).color);
            const fg = over({ ...fg0, a: fg0.a * opacity }, bg);
            const [hi, lo] = [lum(fg), lum(bg)].sort((x, y) => y - x);
            return Math.round(((hi + 0.05) / (lo + 0.05)) * 100) / 100;
          };
          const pick = {
            footer: root.querySelector('[data-lc=footer]'),
            status: root.querySelector('[data-lc=status]'),
            time: root.querySelector('[data-lc=message] time'),
            greeting: root.querySelector('[data-lc=greeting] .name'),
          };
          return Object.fromEntries(Object.entries(pick).filter(([, el]) => el).map(([k, el]) => [k, contrast(el)]));
        });
        console.log(`# contrast (${theme}): ${JSON.stringify(ratios)}`);
        assert.ok(ratios.footer && ratios.time && ratios.status, `measured: ${JSON.stringify(ratios)}`);
        for (const [k, v] of Object.entries(ratios)) assert.ok(v >= 4.5, `${theme}: ${k} contrast ${v}:1 < 4.5:1`);
      });
    }
  });
});

/**
 * A message typed while the network is cut shows up at once as `sending` and stays so (it is
 * queued, never `failed`) for 3 s.
 */
async function assertQueued(page, text) {
  const first = await waitFor(() => domMessageWith(page, text), { timeout: 2_000, interval: 50, what: `"${text}" to be shown` });
  const states = [first.state];
  for (let i = 0; i < 15; i++) {
    await sleep(200);
    const m = await domMessageWith(page, text);
    states.push(m ? m.state : '(absent)');
  }
  assert.equal(states[0], 'sending', `"${text}" is shown as sending at once; states seen: ${states.join(',')}`);
  assert.ok(
    states.every((s) => s === 'sending'),
    `"${text}" stays sending (queued, not failed) while the network is cut; states seen: ${states.join(',')}`,
  );
}

/**
 * The widget shows each of `texts` exactly once, and exactly the server's messages: the same
 * ids in the same order, none twice; the server holds each text exactly once.
 */
async function assertNoLossNoDuplicate(page, ag, conversationId, texts) {
  const server = await ag.messages(conversationId);
  for (const t of texts) {
    assert.equal(server.filter((m) => m.text === t).length, 1, `the server holds "${t}" exactly once`);
  }
  // Let late duplicates (a replay after resume) show up before judging.
  await sleep(1_000);
  const dom = await domMessages(page);
  for (const t of texts) {
    assert.equal(dom.filter((m) => m.text.includes(t)).length, 1, `"${t}" is shown exactly once`);
  }
  const ids = dom.map((m) => m.id).filter(Boolean);
  assert.equal(new Set(ids).size, ids.length, `no message id twice in the DOM: ${JSON.stringify(ids)}`);
  assert.deepEqual(ids, server.map((m) => m.id).sort(byId), 'the widget shows the server history, in order');
}
