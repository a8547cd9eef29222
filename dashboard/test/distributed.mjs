// The dashboard in distributed mode, in Chromium (docs/dashboard.md, "Distributed mode"): a
// real `larachat control-plane` serves the dashboard on one origin, a real `larachat gateway`
// serves the Client API and the socket on another, over the shared NATS and Cassandra
// (LARACHAT_TEST_NATS_URL, LARACHAT_TEST_CASSANDRA: `source /work/run/shared/env.sh`, or
// `deploy/nats.sh start` and `deploy/cassandra.sh start`). No proxy: the control plane tells
// the page the gateway's origin (`dashboard.gateway_url`) and allows it in the CSP; the gateway
// answers CORS for the dashboard's origin (`dashboard.allowed_origins`).
//
// Without those variables the test fails (it never passes silently). Not part of `npm test`
// (which needs no services): `scripts/dashboard-check.sh` runs it when the variables are set.
// Run: cd dashboard && LARACHAT_BIN=../target/debug/larachat node --test test/distributed.mjs

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';

import { ADMIN_EMAIL, ADMIN_PASSWORD, CHROMIUM, CHROMIUM_ARGS, http, larachatBin, uid, waitFor } from '../../widget/test/harness.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const artifactsDir = resolve(here, '..', 'test-artifacts');
const TIMEOUT = 180_000;

let browser;
const procs = [];
let control;
let gateway;

function required(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: start NATS and Cassandra (source /work/run/shared/env.sh, or deploy/*.sh start)`);
  return v;
}

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/** Starts `larachat <role>` on `port`; resolves once it printed its listening line. */
function start(role, port, env) {
  const proc = spawn(larachatBin(), [role, '--listen', `127.0.0.1:${port}`], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  procs.push(proc);
  let stderr = '';
  proc.stderr.on('data', (d) => {
    stderr = (stderr + d).slice(-50_000);
  });
  return new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`${role} did not start in 60 s:\n${stderr}`)), 60_000);
    proc.once('exit', (code) => rej(new Error(`${role} exited with ${code}:\n${stderr}`)));
    createInterface({ input: proc.stdout }).on('line', (line) => {
      if (line.includes('listening on http://')) {
        clearTimeout(timer);
        res(`http://127.0.0.1:${port}`);
      }
    });
  });
}

before(async () => {
  mkdirSync(artifactsDir, { recursive: true });
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('LARACHAT_')));
  const shared = {
    ...inherited,
    LARACHAT_BUS__BACKEND: 'nats',
    LARACHAT_BUS__NATS__URL: required('LARACHAT_TEST_NATS_URL'),
    LARACHAT_STORAGE__BACKEND: 'scylla',
    LARACHAT_STORAGE__SCYLLA__CONTACT_POINTS: required('LARACHAT_TEST_CASSANDRA'),
    LARACHAT_STORAGE__SCYLLA__KEYSPACE: `lc_dash_${uid()}${uid()}`.replaceAll('-', ''),
    LARACHAT_SECURITY__JWT_SECRET: 'dashboard-distributed-test-jwt-secret-0123456789',
    LARACHAT_SECURITY__KEY_PEPPER: 'dashboard-distributed-test-key-pepper-0123456789',
    LARACHAT_LOG: process.env.LARACHAT_LOG || 'warn,async_nats=error,scylla=error',
  };
  const migrated = spawnSync(larachatBin(), ['migrate'], { env: shared, encoding: 'utf8' });
  assert.equal(migrated.status, 0, `larachat migrate: ${migrated.stderr}`);
  const [cp, gw] = [await freePort(), await freePort()];
  const dashboardOrigin = `http://127.0.0.1:${cp}`;
  const gatewayOrigin = `http://127.0.0.1:${gw}`;
  gateway = await start('gateway', gw, { ...shared, LARACHAT_DASHBOARD__ALLOWED_ORIGINS: dashboardOrigin });
  control = await start('control-plane', cp, {
    ...shared,
    LARACHAT_ADMIN_EMAIL: ADMIN_EMAIL,
    LARACHAT_ADMIN_PASSWORD: ADMIN_PASSWORD,
    LARACHAT_DEFAULT_PROJECT_PLAN: 'enterprise',
    LARACHAT_DASHBOARD__GATEWAY_URL: gatewayOrigin,
  });
  const { chromium } = await import('playwright-core');
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
});

after(async () => {
  await browser?.close();
  for (const p of procs) if (p.exitCode === null) p.kill('SIGKILL');
});

test('the inbox on the control plane works against a gateway on another origin (CORS + CSP, no proxy)', { timeout: TIMEOUT }, async () => {
  assert.notEqual(new URL(control).origin, new URL(gateway).origin);
  const token = (await http('POST', `${control}/api/admin/login`, { body: { email: ADMIN_EMAIL, password: ADMIN_PASSWORD } })).body.token;
  const project = (await http('POST', `${control}/api/admin/projects`, { token, body: { name: `Dist ${uid()}` } })).body;
  const sk = (await http('POST', `${control}/api/admin/projects/${project.id}/api-keys`, { token, body: { name: 'seed', scopes: ['read', 'write'] } })).body.key;
  const v1 = async (method, path, body) => {
    const r = await http(method, `${gateway}/api/v1${path}`, { token: sk, body });
    assert.ok(r.status < 300, `${method} ${path}: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body;
  };
  const visitor = (await v1('POST', '/users', { user_identifier: `v-${uid()}`, name: 'Olga Brandt' })).user;
  const conv = await v1('POST', '/conversations', { members: [visitor.id] });
  await v1('POST', `/conversations/${conv.id}/messages`, { text: 'Where is my kettle?', sender: { type: 'end_user', id: visitor.id } });

  const context = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  const page = await context.newPage();
  const problems = [];
  page.on('console', (m) => {
    if (/Content Security Policy|Refused to|CORS|blocked/i.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  const crossOrigin = [];
  page.on('request', (r) => {
    if (r.url().startsWith(gateway)) crossOrigin.push(`${r.method()} ${new URL(r.url()).pathname}`);
  });
  try {
    await page.goto(`${control}/dashboard`);
    await page.getByLabel('Email').fill(ADMIN_EMAIL);
    await page.getByLabel('Password').fill(ADMIN_PASSWORD);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { level: 1, name: 'Projects' }).waitFor({ timeout: 15_000 });
    await page.goto(`${control}/dashboard/#/projects/${project.id}/inbox`);
    // Live: the socket to the gateway's origin is open (CSP connect-src allows ws://gateway).
    await page.locator('[data-test=inbox-status]').getByText('Live').waitFor({ timeout: 20_000 });
    // The list came from the gateway's Client API (CORS) …
    const row = page.locator(`[data-test=conversation][data-id="${conv.id}"]`);
    await row.waitFor({ timeout: 15_000 });
    // … and so does a search.
    await page.locator('[data-test=inbox-search]').fill('kettle');
    await waitFor(async () => (await page.locator('[data-test=conversation]').count()) === 1 && (await row.count()) === 1, { what: 'the search result' });
    // Open it and answer; the answer is stored (read back from the gateway).
    await row.click();
    await page.locator('[data-test=message]').filter({ hasText: 'Where is my kettle?' }).waitFor({ timeout: 10_000 });
    await page.getByLabel('Reply').fill('On its way.');
    await page.keyboard.press('Enter');
    await waitFor(async () => (await v1('GET', `/conversations/${conv.id}/messages`)).data.some((m) => m.text === 'On its way.'), {
      what: 'the reply stored',
      timeout: 10_000,
    });
    // A visitor message arrives live over the cross-origin socket.
    await v1('POST', `/conversations/${conv.id}/messages`, { text: 'Thanks!', sender: { type: 'end_user', id: visitor.id } });
    await page.locator('[data-test=message]').filter({ hasText: 'Thanks!' }).waitFor({ timeout: 10_000 });
    console.log(`cross-origin requests from the page to the gateway: ${[...new Set(crossOrigin)].length} distinct (${crossOrigin.slice(0, 4).join(', ')}, …)`);
    assert.ok(crossOrigin.some((r) => r.startsWith('GET /api/v1/conversations')), crossOrigin.join(', '));
    assert.deepEqual(problems, []);
  } catch (e) {
    await page.screenshot({ path: join(artifactsDir, 'failure-distributed-inbox.png') }).catch(() => {});
    throw e;
  } finally {
    await context.close();
  }
});
