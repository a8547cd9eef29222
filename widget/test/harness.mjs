// Harness for the real-browser tests of the widget (browser.test.mjs): the larachat server
// (spawned from LARACHAT_BIN), Admin API setup, an agent on the Client API, tiny host-page
// servers on their own origins, Chromium through playwright-core, and polling helpers.
// Not a test file itself (node --test only runs *.test.mjs).

import { spawn, spawnSync } from 'node:child_process';
import { createHmac, randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createTcpServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const widgetDir = resolve(here, '..');
export const repoDir = resolve(widgetDir, '..');
export const artifactsDir = join(widgetDir, 'test-artifacts');

export const ADMIN_EMAIL = 'admin@example.com';
export const ADMIN_PASSWORD = 'change-me-please';
export const AGENT = Object.freeze({ type: 'agent', id: 'ana', name: 'Ana' });

export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--no-first-run',
  '--disable-sync',
];

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Polls `fn` until it returns a truthy value (which is returned) or throws no more; fails after
 * `timeout` ms with the last error or the last falsy value in the message.
 */
export async function waitFor(fn, { timeout = 10_000, interval = 100, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = `last value: ${JSON.stringify(v)}`;
    } catch (e) {
      last = `last error: ${e && e.message ? e.message.split('\n')[0] : e}`;
    }
    if (Date.now() >= deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what} (${last})`);
    }
    await sleep(interval);
  }
}

/** The larachat binary: LARACHAT_BIN, else the debug build of this repository. */
export function larachatBin() {
  const bin = process.env.LARACHAT_BIN || join(repoDir, 'target', 'debug', 'larachat');
  if (!existsSync(bin)) {
    throw new Error(`larachat binary not found at ${bin}: build it (cargo build --bin larachat) or set LARACHAT_BIN`);
  }
  return bin;
}

/**
 * Starts `larachat serve` on an ephemeral port with a fresh data dir and the first admin;
 * with `{demo: true}`, with the demo project and pages (test/demo.test.mjs); `env`: more
 * LARACHAT_* settings. Resolves to {base, port, proc, stop()} once it printed its listening
 * address.
 */
export async function startServer({ demo = false, env: extra = {} } = {}) {
  const bin = larachatBin();
  const dataDir = mkdtempSync(join(tmpdir(), 'larachat-browser-'));
  // The server reads every LARACHAT_* variable as configuration and refuses unknown ones
  // (LARACHAT_BIN would be "unknown field `bin`"), so none is inherited: the tests set theirs.
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('LARACHAT_')));
  const env = {
    ...inherited,
    LARACHAT_ADMIN_EMAIL: ADMIN_EMAIL,
    LARACHAT_ADMIN_PASSWORD: ADMIN_PASSWORD,
    LARACHAT_LOG: process.env.LARACHAT_LOG || 'warn',
    // The tests create many projects with one admin: more than the default plan (Free,
    // one project per owner) allows.
    LARACHAT_DEFAULT_PROJECT_PLAN: 'enterprise',
    ...extra,
  };
  // The demo project, where the server has one, must not be created here. Unknown config keys
  // are errors, so only set the key when this binary knows it.
  const probe = spawnSync(bin, ['check-config'], {
    env: { ...env, LARACHAT_DEMO__ENABLED: 'false' },
    encoding: 'utf8',
  });
  if (probe.status === 0 && /^\[demo\]/m.test(probe.stdout)) env.LARACHAT_DEMO__ENABLED = demo ? 'true' : 'false';

  const proc = spawn(bin, ['serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  // Never outlive the test process, even when it is interrupted.
  const killOnExit = () => proc.kill('SIGKILL');
  process.once('exit', killOnExit);
  proc.once('exit', () => process.off('exit', killOnExit));
  let stderr = '';
  proc.stderr.on('data', (d) => {
    stderr += d;
    if (process.env.LARACHAT_TEST_VERBOSE) process.stderr.write(`[larachat] ${d}`); // server logs
    if (stderr.length > 200_000) stderr = stderr.slice(-100_000);
  });
  const base = await new Promise((resolveBase, reject) => {
    const timer = setTimeout(() => reject(new Error(`larachat did not start in 20 s; stderr:\n${stderr}`)), 20_000);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`larachat exited with ${code} before listening; stderr:\n${stderr}`));
    });
    createInterface({ input: proc.stdout }).on('line', (line) => {
      const m = /larachat listening on (http:\/\/\S+)/.exec(line);
      if (m) {
        clearTimeout(timer);
        resolveBase(m[1].replace(/\/$/, ''));
      }
    });
  });
  const port = Number(new URL(base).port);
  return {
    base,
    port,
    proc,
    stderr: () => stderr,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        const exited = new Promise((r) => proc.once('exit', r));
        proc.kill('SIGTERM');
        const t = setTimeout(() => proc.kill('SIGKILL'), 5_000);
        await exited;
        clearTimeout(t);
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** JSON HTTP call; resolves to {status, body, headers}. */
export async function http(method, url, { token, body, headers = {} } = {}) {
  const h = { ...headers };
  if (token) h.authorization = `Bearer ${token}`;
  if (body !== undefined) h['content-type'] = 'application/json';
  const res = await fetch(url, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let json;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = text;
  }
  return { status: res.status, body: json, headers: res.headers };
}

async function ok(p, what) {
  const r = await p;
  if (r.status < 200 || r.status >= 300) {
    throw new Error(`${what}: HTTP ${r.status} ${JSON.stringify(r.body)}`);
  }
  return r.body;
}

/** Admin API: log in once; `project()` creates a project with keys and widget settings. */
export async function adminSession(base) {
  const { token } = await ok(
    http('POST', `${base}/api/admin/login`, { body: { email: ADMIN_EMAIL, password: ADMIN_PASSWORD } }),
    'admin login',
  );
  return {
    token,
    /**
     * A new project: {id, secretKey, publishableKey, widget (the settings view, with
     * identity_secret)}. `widget` is the PUT body ({allowed_origins, identity_verification, …}).
     */
    async project(name, widget) {
      const project = await ok(http('POST', `${base}/api/admin/projects`, { token, body: { name } }), 'create project');
      const secret = await ok(
        http('POST', `${base}/api/admin/projects/${project.id}/api-keys`, {
          token,
          body: { name: 'agent', scopes: ['read', 'write'] },
        }),
        'create secret key',
      );
      const publishable = await ok(
        http('POST', `${base}/api/admin/projects/${project.id}/api-keys`, {
          token,
          body: { name: 'widget', kind: 'publishable' },
        }),
        'create publishable key',
      );
      let view = await ok(
        http('PUT', `${base}/api/admin/projects/${project.id}/widget`, { token, body: widget }),
        'put widget settings',
      );
      if (!view.identity_secret) {
        view = await ok(http('GET', `${base}/api/admin/projects/${project.id}/widget`, { token }), 'get widget settings');
      }
      return { id: project.id, secretKey: secret.key, publishableKey: publishable.key, widget: view };
    },
  };
}

/** `hex(HMAC-SHA256(identity_secret, identifier))`, as a tenant's server computes it. */
export function userHash(identitySecret, identifier) {
  return createHmac('sha256', identitySecret).update(identifier).digest('hex');
}

/** The tenant's agent "Ana" on the Client API with the project's secret key. */
export function agent(base, secretKey) {
  const api = (method, path, body) => ok(http(method, `${base}/api/v1${path}`, { token: secretKey, body }), `${method} ${path}`);
  return {
    async conversations() {
      return (await api('GET', '/conversations?limit=50')).data;
    },
    /** The project's only conversation, once there is one. */
    async waitConversation(timeout = 10_000) {
      return waitFor(async () => (await this.conversations())[0], { timeout, what: 'a conversation on the server' });
    },
    async messages(conversationId) {
      return (await api('GET', `/conversations/${conversationId}/messages?limit=200`)).data;
    },
    async send(conversationId, text) {
      return api('POST', `/conversations/${conversationId}/messages`, {
        text,
        client_msg_id: `agent-${randomUUID()}`,
        sender: AGENT,
      });
    },
    async typing(conversationId, state = 'start') {
      return http('POST', `${base}/api/v1/conversations/${conversationId}/typing`, {
        token: secretKey,
        body: { state, actor: AGENT },
      });
    },
    async read(conversationId, messageId) {
      return api('POST', `/conversations/${conversationId}/read`, { message_id: messageId, reader: AGENT });
    },
    async reads(conversationId) {
      return (await api('GET', `/conversations/${conversationId}/read`)).data;
    },
    async user(id) {
      return api('GET', `/users/${id}`);
    },
    /** Closes the conversation (Client API `DELETE /conversations/{id}`). */
    async close(conversationId) {
      return api('DELETE', `/conversations/${conversationId}`);
    },
  };
}

/**
 * A host site on its own origin (http://127.0.0.1:<port>): `page(path, html)` registers a page,
 * `url(path)` / `origin` / `port`; `close()`.
 */
export async function hostServer() {
  const pages = new Map();
  const server = createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    const html = pages.get(path);
    if (path === '/favicon.ico') {
      res.writeHead(204).end();
      return;
    }
    if (html === undefined) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' }).end(html);
  });
  // 'localhost' may resolve to ::1 first in Chromium; it falls back to 127.0.0.1.
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const port = server.address().port;
  server.keepAliveTimeout = 1000;
  return {
    port,
    origin: `http://127.0.0.1:${port}`,
    page(path, html) {
      pages.set(path, html);
      return `http://127.0.0.1:${port}${path}`;
    },
    url(path, host = '127.0.0.1') {
      return `http://${host}:${port}${path}`;
    },
    close() {
      server.closeAllConnections?.();
      return new Promise((r) => server.close(r));
    },
  };
}

/** A host page with the embed snippet of docs/widget.md. */
export function embedPage({ larachatBase, config, title = 'Host page', body = '' }) {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${title}</title>
<style>
  body { font-family: Georgia, serif; margin: 0; padding: 2rem; background: #fafafa; color: #222; }
  /* Hostile host CSS: the shadow DOM must keep the widget intact. */
  button { background: hotpink !important; font-size: 30px !important; }
  div { border: 1px dashed #bbb; }
</style>
<script>window.LaraChatConfig = ${JSON.stringify(config)};</script>
<script src="${larachatBase}/widget/loader.js" async></script>
</head>
<body>
<h1>${title}</h1>
${body}
</body>
</html>`;
}

/** Launches Debian's Chromium through playwright-core (`extraArgs`: more command-line switches). */
export async function launchBrowser(extraArgs = []) {
  let chromium;
  try {
    ({ chromium } = await import('playwright-core'));
  } catch (e) {
    throw new Error(`playwright-core is not installed (npm install in widget/): ${e.message}`);
  }
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: apt-get install -y chromium (scripts/browser-test.sh does it)`);
  }
  return chromium.launch({ executablePath: CHROMIUM, args: [...CHROMIUM_ARGS, ...extraArgs], headless: true });
}

/**
 * Records what a page does that the tests look at: WebSockets opened, Widget API requests and
 * responses (by path), failed requests, console errors and page errors.
 */
export function recordPage(page) {
  const rec = { websockets: [], requests: [], responses: [], failures: [], console: [], errors: [] };
  page.on('websocket', (ws) => rec.websockets.push(ws.url()));
  page.on('request', (r) => rec.requests.push({ method: r.method(), url: r.url() }));
  page.on('response', (r) => rec.responses.push({ method: r.request().method(), url: r.url(), status: r.status() }));
  page.on('requestfailed', (r) => rec.failures.push({ method: r.method(), url: r.url(), error: r.failure()?.errorText }));
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') rec.console.push(`${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => rec.errors.push(String(e && e.stack ? e.stack : e)));
  rec.summary = () =>
    JSON.stringify(
      {
        websockets: rec.websockets,
        widgetRequests: rec.requests.filter((r) => r.url.includes('/widget/')),
        responses: rec.responses.filter((r) => r.url.includes('/widget/')),
        failures: rec.failures,
        console: rec.console.slice(-20),
        errors: rec.errors,
      },
      null,
      2,
    );
  return rec;
}

/**
 * A TCP proxy on 127.0.0.1 in front of the larachat port, to cut the network for real:
 * `cut()` stops listening (new connections are refused) and resets every open connection
 * (HTTP and WebSocket alike); `restore()` listens again on the same port. `blackhole()`
 * keeps every connection up but drops what the server sends (requests still arrive: answers
 * and acks are lost) until `restore()`. `base` is the larachat base URL through the proxy.
 */
export async function tcpProxy(targetPort) {
  const sockets = new Set();
  const state = { blackhole: false };
  const server = createTcpServer((client) => {
    const upstream = connect(targetPort, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {});
    }
    client.pipe(upstream);
    upstream.on('data', (chunk) => {
      if (!state.blackhole) client.write(chunk);
    });
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  const listen = (port) =>
    new Promise((r, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', reject);
        r();
      });
    });
  await listen(0);
  const port = server.address().port;
  const resetAll = () => {
    for (const s of sockets) s.resetAndDestroy ? s.resetAndDestroy() : s.destroy();
    sockets.clear();
  };
  return {
    port,
    base: `http://127.0.0.1:${port}`,
    async cut() {
      const closed = new Promise((r) => server.close(r));
      resetAll();
      await closed;
    },
    blackhole() {
      state.blackhole = true;
    },
    async restore() {
      state.blackhole = false;
      if (!server.listening) await listen(port);
    },
    async close() {
      resetAll();
      if (server.listening) await new Promise((r) => server.close(r));
    },
  };
}

/** `new Date()`-free unique suffix for names and texts. */
export const uid = () => randomUUID().slice(0, 8);
