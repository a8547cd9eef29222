// Measures the inbox with many conversations (not a test: prints numbers). Starts the real
// binary, creates N conversations (default 10,000) with a secret key, then opens the dashboard's
// inbox in Chromium and prints the time from navigation to the first page of conversations
// shown and to the socket being live, the time of "Load more" (the next page), and search:
// Client API times (median of 5) for a word every conversation has, for a rare one, and from
// typing a search to its result shown (the oldest conversation, far beyond the first page).
// Run (in dashboard/): LARACHAT_BIN=../target/debug/larachat node bench/inbox-10k.mjs [N]
// The agent token comes from the gateway's POST /api/v1/agent-tokens (as in dashboard.test.mjs).

import { ADMIN_EMAIL, ADMIN_PASSWORD, CHROMIUM, CHROMIUM_ARGS, http, startServer } from '../../widget/test/harness.mjs';

const N = Number(process.argv[2] || 10_000);
const server = await startServer();
const { chromium } = await import('playwright-core');
const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
try {
  const token = (await http('POST', `${server.base}/api/admin/login`, { body: { email: ADMIN_EMAIL, password: ADMIN_PASSWORD } })).body.token;
  const project = (await http('POST', `${server.base}/api/admin/projects`, { token, body: { name: 'Inbox 10k' } })).body;
  const sk = (await http('POST', `${server.base}/api/admin/projects/${project.id}/api-keys`, { token, body: { name: 'seed', scopes: ['read', 'write'] } })).body.key;
  const t0 = Date.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      while (next < N) {
        const i = next++;
        let r = await http('POST', `${server.base}/api/v1/conversations`, { token: sk, body: { subject: `Customer ${i}` } });
        // The per-address and per-key rate limits: wait as told and try again.
        while (r.status === 429) {
          await new Promise((done) => setTimeout(done, 1000 * Number(r.headers.get('retry-after') || 1)));
          r = await http('POST', `${server.base}/api/v1/conversations`, { token: sk, body: { subject: `Customer ${i}` } });
        }
        if (r.status !== 201) throw new Error(`create conversation: ${r.status} ${JSON.stringify(r.body)}`);
      }
    }),
  );
  console.log(`created ${N} conversations in ${Date.now() - t0} ms`);

  const context = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  const page = await context.newPage();
  await page.route('**/api/admin/projects/*/agent-token', async (route) => {
    const r = await http('POST', `${server.base}/api/v1/agent-tokens`, { token: sk, body: { agent: { id: 'member:bench', name: 'Bench' } } });
    await route.fulfill({ status: 201, contentType: 'application/json', body: JSON.stringify(r.body) });
  });
  await page.goto(`${server.base}/dashboard/`);
  await page.getByLabel('Email').fill(ADMIN_EMAIL);
  await page.getByLabel('Password').fill(ADMIN_PASSWORD);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { level: 1, name: 'Projects' }).waitFor();
  const start = Date.now();
  await page.goto(`${server.base}/dashboard/#/projects/${project.id}/inbox`);
  await page.locator('[data-test=conversation]').first().waitFor({ timeout: 30_000 });
  const listed = Date.now() - start;
  await page.locator('[data-test=inbox-status]').getByText('Live').waitFor({ timeout: 30_000 });
  const live = Date.now() - start;
  const before = await page.locator('[data-test=conversation]').count();
  const m0 = Date.now();
  await page.getByRole('button', { name: 'Load more' }).click();
  await page.waitForFunction((n) => document.querySelectorAll('[data-test=conversation]').length > n, before);
  console.log(
    `inbox with ${N} conversations: first page (${before}) shown ${listed} ms after navigation, live ${live} ms; ` +
      `"Load more" → ${await page.locator('[data-test=conversation]').count()} shown in ${Date.now() - m0} ms`,
  );

  // Search, on the Client API: median of 5 of one page (50).
  const agentToken = (await http('POST', `${server.base}/api/v1/agent-tokens`, { token: sk, body: { agent: { id: 'bench' } } })).body.token;
  for (const q of ['customer', 'customer 0', `customer ${N - 1}`, 'nothing']) {
    const times = [];
    let found = 0;
    for (let k = 0; k < 5; k++) {
      const t = process.hrtime.bigint();
      const r = await http('GET', `${server.base}/api/v1/conversations?limit=50&q=${encodeURIComponent(q)}`, { token: agentToken });
      times.push(Number(process.hrtime.bigint() - t) / 1e6);
      if (r.status !== 200) throw new Error(`search ${q}: ${r.status} ${JSON.stringify(r.body)}`);
      found = r.body.data.length;
    }
    times.sort((a, b) => a - b);
    console.log(`search q=${JSON.stringify(q)} over ${N} conversations: ${found} on the first page, median ${times[2].toFixed(1)} ms (min ${times[0].toFixed(1)}, max ${times[4].toFixed(1)})`);
  }
  // In the inbox: from typing (debounce of 300 ms included) to the oldest conversation shown.
  await page.getByRole('button', { name: 'All', exact: true }).click();
  const s0 = Date.now();
  await page.locator('[data-test=inbox-search]').fill('Customer 0');
  await page.waitForFunction(() => {
    const rows = document.querySelectorAll('[data-test=conversation]');
    return rows.length === 1 && /Customer 0(?!\d)/.test(rows[0].textContent);
  }, null, { timeout: 30_000 });
  console.log(`inbox search "Customer 0" (the oldest of ${N}) shown ${Date.now() - s0} ms after typing (300 ms debounce included)`);
} finally {
  await browser.close();
  await server.stop();
}
