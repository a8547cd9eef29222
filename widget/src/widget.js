// @ts-check
/*! Lara Chat widget — contract: docs/widget.md (Widget API) and docs/protocol.md (realtime v1). */
(() => {
  'use strict';

  /** @typedef {{type: string, id: string, name?: string | null}} Actor */
  /**
   * @typedef {{id: string, seq?: number, project_id?: string, conversation_id: string, sender: Actor,
   *   text: string, metadata?: Record<string, unknown>, client_msg_id?: string | null,
   *   created_at: string}} Message
   */
  /** @typedef {{id: string, status?: string, subject?: string | null, created_at?: string, last_message_id?: string | null}} Conversation */
  /**
   * One rendered message. `id` is null until the server has stored it (own messages being sent).
   * @typedef {{
   *   id: string | null, cmid: string | null, text: string, mine: boolean, key: string, ts: number,
   *   state: 'sending' | 'sent' | 'failed', m: Message | null, seq: number,
   *   req: number | null, timer: number | undefined, el: HTMLElement, body: HTMLElement, meta: HTMLElement,
   *   reason: string, final: boolean
   * }} Rec
   */
  /** @typedef {{status: number, ok: boolean, data: any}} ApiResult */
  /** @typedef {'connecting' | 'connected' | 'reconnecting' | 'offline' | 'unavailable'} Status */
  /** A refusal as the server words it (HTTP `error` object or realtime `error` frame). @typedef {{code?: string, message?: string, retryable?: boolean}} ApiErr */
  /** How an init ended: `retry` (network, 5xx, 429), `refused` (origin or key: nothing is shown), `unavailable` (identity: an explanation is shown). @typedef {'ok' | 'retry' | 'refused' | 'unavailable'} InitResult */

  const W = window;
  const D = document;
  const stub = W.LaraChat;
  if (stub && stub._loaded) return;

  /** @param {...unknown} a */
  const warn = (...a) => {
    try {
      console.warn('[LaraChat]', ...a);
    } catch (_) {
      /* ignore */
    }
  };

  /** For the tenant: why the widget cannot work on this page. @param {...unknown} a */
  const complain = (...a) => {
    try {
      console.error('[LaraChat]', ...a);
    } catch (_) {
      /* ignore */
    }
  };

  /**
   * Wraps a handler so that nothing (sync throw or async rejection) reaches the host page.
   * @template {unknown[]} A
   * @param {(...args: A) => unknown} fn
   * @returns {(...args: A) => void}
   */
  const guard =
    (fn) =>
    (...args) => {
      try {
        const r = fn(...args);
        if (r instanceof Promise) r.catch(warn);
      } catch (e) {
        warn(e);
      }
    };

  // ---------------------------------------------------------------------------------------------
  // Strings (English, French)
  // ---------------------------------------------------------------------------------------------

  const STRINGS = {
    en: {
      open: 'Open chat',
      openUnread: 'Open chat, {n} unread',
      minimize: 'Close chat',
      close: 'Close chat',
      title: 'Chat with us',
      greeting: 'Hi there 👋 How can we help you today?',
      placeholder: 'Write a message…',
      inputLabel: 'Message',
      send: 'Send message',
      emoji: 'Insert emoji',
      emojiList: 'Emoji',
      log: 'Conversation',
      typing: '{name} is typing…',
      someone: 'Someone',
      agent: 'Support',
      bot: 'Bot',
      seen: 'Seen',
      sending: 'Sending…',
      failed: 'Not sent',
      retry: 'Retry',
      retryLabel: 'Retry sending this message',
      connecting: 'Connecting…',
      connected: 'Online',
      reconnecting: 'Reconnecting…',
      offline: 'Offline — messages will be sent when you are back',
      unavailableStatus: 'Unavailable',
      older: 'Loading earlier messages…',
      unavailable: 'Chat is unavailable right now. Please try again later.',
      historyError: 'Could not load messages.',
      tooLong: 'This message is too long: remove about {n} characters.',
      closed: 'This conversation has been closed.',
      newConversation: 'Start a new conversation',
      conversations: 'Your conversations',
      conversation: 'Conversation of {d}',
      closedTag: '(closed)',
      powered: 'Powered by Lara Chat',
    },
    fr: {
      open: 'Ouvrir le chat',
      openUnread: 'Ouvrir le chat, {n} non lus',
      minimize: 'Fermer le chat',
      close: 'Fermer le chat',
      title: 'Discutez avec nous',
      greeting: 'Bonjour 👋 Comment pouvons-nous vous aider ?',
      placeholder: 'Écrivez un message…',
      inputLabel: 'Message',
      send: 'Envoyer le message',
      emoji: 'Insérer un emoji',
      emojiList: 'Emoji',
      log: 'Conversation',
      typing: '{name} est en train d’écrire…',
      someone: 'Quelqu’un',
      agent: 'Support',
      bot: 'Robot',
      seen: 'Vu',
      sending: 'Envoi…',
      failed: 'Non envoyé',
      retry: 'Réessayer',
      retryLabel: 'Réessayer d’envoyer ce message',
      connecting: 'Connexion…',
      connected: 'En ligne',
      reconnecting: 'Reconnexion…',
      offline: 'Hors ligne — les messages partiront à votre retour',
      unavailableStatus: 'Indisponible',
      older: 'Chargement des messages précédents…',
      unavailable: 'Le chat est indisponible pour le moment. Réessayez plus tard.',
      historyError: 'Impossible de charger les messages.',
      tooLong: 'Ce message est trop long : retirez environ {n} caractères.',
      closed: 'Cette conversation est terminée.',
      newConversation: 'Démarrer une nouvelle conversation',
      conversations: 'Vos conversations',
      conversation: 'Conversation du {d}',
      closedTag: '(terminée)',
      powered: 'Propulsé par Lara Chat',
    },
  };
  /** @typedef {keyof typeof STRINGS.en} StringKey */

  const EMOJI = '😀 😂 😊 😍 🥰 😉 😎 🤔 😅 😢 😭 😮 👍 👎 👏 🙏 👋 🙌 💪 🎉 ❤️ 🔥 ✨ ✅'.split(' ');

  // ---------------------------------------------------------------------------------------------
  // Configuration
  // ---------------------------------------------------------------------------------------------

  /** @type {LaraChatPageConfig} */
  const cfg = W.LaraChatConfig || (stub && stub.config) || {};
  const apiKey = String(cfg.apiKey || '');
  /** @type {Record<string, unknown>} */
  const pageSettings = cfg.settings && typeof cfg.settings === 'object' ? { ...cfg.settings } : {};
  const base = findBase();
  const storeKey = `larachat:${apiKey}:visitor`;
  /** Former visitor ids of this browser whose conversations were carried over to the user it identified as. */
  const formerKey = `larachat:${apiKey}:former`;

  function findBase() {
    if (stub && typeof stub.base === 'string' && stub.base) return stub.base;
    const s = D.currentScript || D.querySelector('script[src*="/widget/widget.js"]');
    const src = s instanceof HTMLScriptElement ? s.src : '';
    const b = src.replace(/\/widget\/widget\.js([?#].*)?$/, '');
    return b === src ? '' : b;
  }

  // ---------------------------------------------------------------------------------------------
  // State
  // ---------------------------------------------------------------------------------------------

  /** @type {LaraChatUser | null} */
  let user = cfg.user && typeof cfg.user === 'object' ? cfg.user : null;
  let token = '';
  let expiresAt = 0;
  let userId = '';
  let former = lsGet(formerKey);
  let convId = '';
  let convClosed = false;
  /** A conversation the visitor picked in the switcher (not the server's current one). */
  let chosen = '';
  /** The visitor's conversations (newest first), for the switcher. @type {Conversation[]} */
  let convList = [];
  /** The switcher (shown with two conversations or more). @type {HTMLSelectElement | null} */
  let switcher = null;
  /** Longest message text in UTF-8 bytes, from init (0: unknown, the server decides). */
  let maxBytes = 0;
  let realtimePath = '/realtime/v1';
  /** @type {Record<string, unknown>} */
  let projectSettings = {};
  /** Session generation: bumped by identify() so that stale async results are dropped. */
  let gen = 0;
  /** @type {number | undefined} */
  let refreshTimer;

  /** @type {WebSocket | null} */
  let ws = null;
  let authed = false;
  let attempt = 0;
  let reqSeq = 0;
  let subReq = -1;
  let stopped = false;
  let reinitUsed = false;
  let offline = false;
  let lastRx = 0;
  let pingAt = 0;
  let hbMs = 25000;
  /** @type {number | undefined} */
  let hbTimer;
  /** @type {number | undefined} */
  let reconnectTimer;
  /** @type {Status} */
  let status = 'connecting';

  /** Messages in display order: stored ones by id, then unsent own ones in typing order. @type {Rec[]} */
  const recs = [];
  /** @type {Map<string, Rec>} */
  const byId = new Map();
  /** Own messages not yet stored, by client_msg_id. @type {Map<string, Rec>} */
  const byCmid = new Map();
  /** Own messages waiting for their ack, oldest first. @type {Rec[]} */
  const outbox = [];
  /** In-flight `send` requests of the current socket. @type {Map<number, Rec>} */
  const reqs = new Map();
  /**
   * Protocol §7, the contiguous resume cursor: the id and `seq` of the newest message held
   * such that every message after the first one held is held too. Resuming from it misses
   * nothing, whatever the gateways' clocks.
   */
  let cursorId = '';
  const NIL_ID = '00000000-0000-0000-0000-000000000000';
  let cursorSeq = 0;
  /** Messages held above the cursor (waiting for the gap below them to fill): seq → id. @type {Map<number, string>} */
  const ahead = new Map();
  /** When the cursor was first seen stuck behind a held message (0: not stuck). */
  let gapSince = 0;
  /** Whether the pending subscribe carries `after` (its `subscribed` then ends a complete replay). */
  let subResumes = false;
  let seq = 0;
  let posting = false;
  let hasMore = false;
  let historyOk = false;
  let loadingOlder = false;
  let isOpen = false;
  let wantOpen = false;
  let unread = 0;
  let lastReadSent = '';
  let agentReadMax = '';
  let ready = false;
  let typingSentAt = 0;
  let typingOn = false;
  /** @type {number | undefined} */
  let typingIdle;
  /** @type {Map<string, {name: string, timer: number}>} */
  const typers = new Map();

  /** @type {Record<string, Function[]>} */
  const listeners = { message: [], open: [], close: [], ready: [] };

  /** @type {Record<StringKey, string>} */
  let t = STRINGS.en;
  let locale = 'en';

  /**
   * @param {string} ev
   * @param {unknown} [arg]
   */
  function emit(ev, arg) {
    for (const fn of listeners[ev] || []) {
      try {
        fn(arg);
      } catch (e) {
        warn(`a '${ev}' listener threw`, e);
      }
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Small helpers
  // ---------------------------------------------------------------------------------------------

  /**
   * @param {string} tag
   * @param {Record<string, string>} [attrs]
   * @param {(Node | string)[]} [kids]
   * @returns {HTMLElement}
   */
  function h(tag, attrs, kids) {
    const el = D.createElement(tag);
    for (const k in attrs || {}) el.setAttribute(k, /** @type {Record<string,string>} */ (attrs)[k]);
    for (const c of kids || []) el.append(c); // strings become text nodes, never HTML
    return el;
  }

  const SVGNS = 'http://www.w3.org/2000/svg';
  /** @param {string} d path data of a 24×24 stroke icon */
  function icon(d) {
    const s = D.createElementNS(SVGNS, 'svg');
    s.setAttribute('viewBox', '0 0 24 24');
    s.setAttribute('aria-hidden', 'true');
    s.setAttribute('focusable', 'false');
    const p = D.createElementNS(SVGNS, 'path');
    p.setAttribute('d', d);
    s.append(p);
    return s;
  }
  const I_CHAT = 'M4 5.5A2.5 2.5 0 0 1 6.5 3h11A2.5 2.5 0 0 1 20 5.5v8a2.5 2.5 0 0 1-2.5 2.5H10l-4.5 4v-4h0A1.5 1.5 0 0 1 4 14.5z';
  const I_DOWN = 'M6 9l6 6 6-6';
  const I_X = 'M6 6l12 12M18 6L6 18';
  const I_SEND = 'M4 12l16-8-6 16-2.5-6.5z M11.5 13.5L20 4';
  const I_SMILE = 'M12 21a9 9 0 1 0 0-18 9 9 0 0 0 0 18z M8.5 14.5s1.2 2 3.5 2 3.5-2 3.5-2 M9 9.5h.01 M15 9.5h.01';

  /**
   * @param {StringKey} k
   * @param {Record<string, string | number>} [vars]
   */
  function tr(k, vars) {
    let s = t[k] || STRINGS.en[k];
    for (const v in vars || {}) s = s.replace(`{${v}}`, String(/** @type {Record<string, unknown>} */ (vars)[v]));
    return s;
  }

  function lsGet(k = storeKey) {
    try {
      return W.localStorage.getItem(k) || '';
    } catch (_) {
      return '';
    }
  }
  /** @param {string} v @param {string} [k] */
  function lsSet(v, k = storeKey) {
    try {
      W.localStorage.setItem(k, v);
    } catch (_) {
      /* storage blocked: the visitor will be anonymous again next time */
    }
  }

  /** @returns {string} a client_msg_id: 1–64 chars of [A-Za-z0-9_:-] */
  function newCmid() {
    const c = W.crypto;
    if (c && typeof c.randomUUID === 'function') return c.randomUUID();
    let s = 'w-' + Date.now().toString(36) + '-';
    while (s.length < 40) s += Math.random().toString(36).slice(2);
    return s.slice(0, 64);
  }

  /** @param {Actor} a */
  const isMineActor = (a) =>
    !!a && a.type === 'end_user' && ((!!userId && a.id === userId) || former.split(' ').includes(a.id));

  /** @param {Actor} a */
  function actorName(a) {
    if (a && a.name) return a.name;
    if (a && a.type === 'bot') return t.bot;
    if (a && a.type === 'agent') return t.agent;
    return t.someone;
  }

  /** @param {number} ts */
  function fmtTime(ts) {
    const d = new Date(ts);
    if (isNaN(d.getTime())) return '';
    const today = d.toDateString() === new Date().toDateString();
    /** @type {Intl.DateTimeFormatOptions} */
    const o = today
      ? { hour: 'numeric', minute: '2-digit' }
      : { day: 'numeric', month: 'short', hour: 'numeric', minute: '2-digit' };
    try {
      return d.toLocaleString(locale, o);
    } catch (_) {
      return d.toLocaleString(undefined, o);
    }
  }

  /** Bytes of `s` in UTF-8 (what the server's text limit counts). @param {string} s */
  function utf8Len(s) {
    let n = 0;
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c < 0x80) n += 1;
      else if (c < 0x800) n += 2;
      else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
        n += 4; // a surrogate pair: one code point
        i++;
      } else n += 3;
    }
    return n;
  }

  const LINK = /\b(?:https?:\/\/|mailto:)[^\s<>"]+/gi;
  /**
   * Message text as text nodes and links: http, https and mailto only (what `new URL` reads
   * as such), opening in a new tab without referrer or opener. Never HTML.
   * @param {string} text
   * @returns {(Node | string)[]}
   */
  function linkify(text) {
    /** @type {(Node | string)[]} */
    const out = [];
    let last = 0;
    for (const m of text.matchAll(LINK)) {
      let raw = m[0];
      // Trailing punctuation belongs to the sentence; a closing bracket only if unbalanced.
      for (;;) {
        const c = raw.slice(-1);
        const open = { ')': '(', ']': '[', '}': '{' }[c];
        if (/[.,;:!?'"]/.test(c) || (open && raw.split(c).length > raw.split(open).length)) raw = raw.slice(0, -1);
        else break;
      }
      let href = '';
      try {
        const u = new URL(raw);
        if (/^(https?|mailto):$/.test(u.protocol) && raw.length > 7) href = u.href;
      } catch (_) {
        /* not a URL: stays text */
      }
      const at = m.index || 0;
      if (!href) continue;
      out.push(text.slice(last, at), h('a', { href, target: '_blank', rel: 'noopener noreferrer nofollow' }, [raw]));
      last = at + raw.length;
    }
    out.push(text.slice(last));
    return out;
  }

  // ---------------------------------------------------------------------------------------------
  // HTTP: the Widget API
  // ---------------------------------------------------------------------------------------------

  /**
   * @param {'GET' | 'POST'} method
   * @param {string} path under /widget/v1/
   * @param {Record<string, string | number | undefined> | null} query
   * @param {unknown} [body]
   * @param {{auth?: boolean, timeout?: number, retried?: boolean}} [o]
   * @returns {Promise<ApiResult>} rejects on network errors
   */
  async function api(method, path, query, body, o = {}) {
    const u = new URL(`${base}/widget/v1/${path}`);
    u.searchParams.set('key', apiKey);
    for (const k in query || {}) {
      const v = /** @type {Record<string, unknown>} */ (query)[k];
      if (v !== undefined && v !== null && v !== '') u.searchParams.set(k, String(v));
    }
    /** @type {Record<string, string>} */
    const headers = {};
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (o.auth !== false) headers.authorization = `Bearer ${token}`;
    /** @type {RequestInit} */
    const init = { method, headers, mode: 'cors', credentials: 'omit', cache: 'no-store' };
    if (body !== undefined) init.body = JSON.stringify(body);
    if (o.timeout && typeof AbortSignal.timeout === 'function') init.signal = AbortSignal.timeout(o.timeout);
    const res = await fetch(u.href, init);
    let data = null;
    try {
      data = await res.json();
    } catch (_) {
      /* empty or non-JSON body */
    }
    if (res.status === 401 && o.auth !== false && !o.retried && (await reinit())) {
      return api(method, path, query, body, { ...o, retried: true });
    }
    return { status: res.status, ok: res.ok, data };
  }

  /**
   * After an init that failed without an answer the page may read: either the network (the
   * server is restarting) or a refusal the browser hid (an origin or key the server refuses:
   * their preflight gets no CORS headers). A CORS-simple request (text/plain, no preflight)
   * tells them apart: a refusal answers it readably with its reason, which the tenant needs.
   * @returns {Promise<ApiErr | null>} the refusal, or null (network: try again later)
   */
  async function probe() {
    try {
      const u = new URL(`${base}/widget/v1/init`);
      u.searchParams.set('key', apiKey);
      const res = await fetch(u.href, { method: 'POST', body: '{}', mode: 'cors', credentials: 'omit', cache: 'no-store' });
      if (res.status !== 401 && res.status !== 403) return null;
      const d = await res.json();
      return (d && d.error) || null;
    } catch (_) {
      return null;
    }
  }

  /**
   * POST /widget/v1/init. On success stores the session; on failure changes nothing.
   * @param {boolean} fresh the conversation comes only from this answer (first init, identify)
   * @returns {Promise<InitResult>}
   */
  async function init(fresh) {
    /** @type {Record<string, unknown>} */
    const body = {};
    if (user) {
      /** @type {Record<string, unknown>} */
      const u = {};
      for (const k of ['identifier', 'name', 'email', 'avatar', 'user_hash', 'user_jwt']) {
        const v = /** @type {Record<string, unknown>} */ (/** @type {unknown} */ (user))[k];
        if (v !== undefined && v !== null && v !== '') u[k] = v;
      }
      body.user = u;
    }
    // With a user too: the conversations this browser had as a visitor are carried over.
    const vt = lsGet();
    if (vt) body.visitor_token = vt;
    /** @type {ApiResult | null} */
    let r = null;
    try {
      r = await api('POST', 'init', null, body, { auth: false, timeout: 15000 });
    } catch (e) {
      const refused = await probe();
      if (refused) {
        complain(`the server refuses this page, the widget stays hidden: ${refused.code}: ${refused.message}`);
        return 'refused';
      }
      warn('init failed: network error', e);
      return 'retry';
    }
    const d = r.data;
    if (!r.ok || !d || !d.session || !d.session.token) {
      /** @type {ApiErr | null} */
      const err = d && d.error;
      const why = `HTTP ${r.status}${err ? ` ${err.code}: ${err.message}` : ''}`;
      if (r.status >= 500 || r.status === 408 || r.status === 429 || (err && err.retryable)) {
        warn(`init failed: ${why}`);
        return 'retry';
      }
      complain(`chat is unavailable on this page: ${why}`);
      return 'unavailable';
    }
    token = String(d.session.token);
    expiresAt = Date.parse(d.session.expires_at) || 0;
    if (!user && typeof d.visitor_token === 'string' && d.visitor_token) lsSet(d.visitor_token);
    // Carried over to the identified user: a later anonymous visit on this browser (after a
    // logout) starts afresh instead of seeing that user's conversation.
    else if (user && vt) lsSet('');
    const from = String(d.carried_over_from || '');
    if (from && !former.split(' ').includes(from)) {
      former = `${former} ${from}`.trim();
      lsSet(former, formerKey);
    }
    if (d.user && d.user.id) userId = String(d.user.id);
    if (d.settings && typeof d.settings === 'object') projectSettings = d.settings;
    const mb = d.limits && Number(d.limits.max_message_bytes);
    maxBytes = mb > 0 ? mb : 0;
    if (typeof d.realtime_url === 'string' && d.realtime_url) realtimePath = d.realtime_url;
    const c = /** @type {Conversation | null} */ (d.conversation || null);
    if (fresh) {
      convId = c ? c.id : '';
      setClosed(!!c && c.status === 'closed');
    } else if (chosen) {
      // The visitor picked a conversation: a session refresh keeps it.
    } else if (c && c.id !== convId) {
      adoptConversation(c);
    } else if (!c && convId) {
      setClosed(true);
    } else if (c && c.id === convId) {
      setClosed(c.status === 'closed');
    }
    scheduleRefresh();
    return 'ok';
  }

  /** @type {Promise<boolean> | null} */
  let reinitP = null;
  /** Re-runs init (expired or invalid session); concurrent callers share one request. */
  function reinit() {
    if (!reinitP) {
      reinitP = init(false).then((k) => k === 'ok').finally(() => {
        reinitP = null;
      });
    }
    return reinitP;
  }

  function scheduleRefresh() {
    clearTimeout(refreshTimer);
    if (!expiresAt) return;
    const left = expiresAt - Date.now();
    // Re-init 5 min before expiry (or at 80 % of a short lifetime), never sooner than 30 s.
    const ms = Math.max(30000, Math.min(left - 300000, left * 0.8));
    refreshTimer = W.setTimeout(
      guard(async () => {
        if (!(await reinit())) {
          clearTimeout(refreshTimer);
          refreshTimer = W.setTimeout(guard(scheduleRefresh), 60000);
        }
      }),
      Math.min(ms, 2 ** 31 - 1)
    );
  }

  /** @param {Conversation} c */
  function adoptConversation(c) {
    convId = c.id;
    setClosed(c.status === 'closed');
    subscribe();
  }

  // ---------------------------------------------------------------------------------------------
  // UI
  // ---------------------------------------------------------------------------------------------

  const CSS = `
:host{all:initial!important}
*,*::before,*::after{box-sizing:border-box}
[hidden]{display:none!important}
.root{--lc-accent:#4f46e5;--lc-on-accent:#fff;--lc-bg:#fff;--lc-fg:#111827;--lc-muted:#6b7280;--lc-line:#e5e7eb;
--lc-theirs:#f1f3f7;--lc-soft:#f8f9fb;--lc-danger:#dc2626;--lc-shadow:0 18px 50px rgba(15,23,42,.20),0 3px 10px rgba(15,23,42,.08);
position:fixed;bottom:20px;right:20px;z-index:2147483000;color:var(--lc-fg);text-align:left;
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans",sans-serif;
-webkit-font-smoothing:antialiased;letter-spacing:normal;color-scheme:light}
.root.left{right:auto;left:20px}
.root.dark{--lc-bg:#151a23;--lc-fg:#e8ebf1;--lc-muted:#98a2b3;--lc-line:#262d3a;--lc-theirs:#232a36;--lc-soft:#10141b;
--lc-danger:#f87171;--lc-shadow:0 18px 50px rgba(0,0,0,.55),0 3px 10px rgba(0,0,0,.3);color-scheme:dark}
button{font:inherit;color:inherit;background:none;border:0;margin:0;padding:0;cursor:pointer;-webkit-tap-highlight-color:transparent}
:focus{outline:none}
:focus-visible{outline:2px solid var(--lc-accent);outline-offset:2px}
.launcher{position:relative;width:60px;height:60px;border-radius:50%;background:var(--lc-accent);color:var(--lc-on-accent);
display:grid;place-items:center;box-shadow:0 8px 24px rgba(15,23,42,.25);transition:transform .18s ease,box-shadow .18s ease}
.launcher:hover{transform:scale(1.06);box-shadow:0 10px 28px rgba(15,23,42,.3)}
.launcher:focus-visible{outline-offset:3px}
.launcher svg{width:28px;height:28px;fill:none;stroke:currentColor;stroke-width:2;stroke-linecap:round;stroke-linejoin:round}
.badge{position:absolute;top:-3px;right:-3px;min-width:22px;height:22px;padding:0 6px;border-radius:11px;background:#ef4444;
color:#fff;font-size:12px;font-weight:700;line-height:18px;text-align:center;border:2px solid #fff}
.left .badge{right:auto;left:-3px}
.panel{position:absolute;bottom:76px;right:0;width:370px;height:560px;max-height:calc(100vh - 110px);max-height:calc(100dvh - 110px);
display:flex;flex-direction:column;background:var(--lc-bg);border-radius:18px;box-shadow:var(--lc-shadow);overflow:hidden;
transform-origin:bottom right;animation:lc-in .24s cubic-bezier(.2,.8,.3,1)}
.left .panel{right:auto;left:0;transform-origin:bottom left}
@keyframes lc-in{from{opacity:0;transform:translateY(14px) scale(.96)}to{opacity:1;transform:none}}
@keyframes lc-dot{0%,80%,100%{opacity:.25;transform:translateY(0)}40%{opacity:1;transform:translateY(-2px)}}
@keyframes lc-spin{to{transform:rotate(360deg)}}
.head{display:flex;align-items:center;gap:12px;padding:16px 12px 16px 18px;background:var(--lc-accent);color:var(--lc-on-accent);flex-shrink:0}
.head :focus-visible{outline-color:var(--lc-on-accent)}
.logo{width:38px;height:38px;border-radius:50%;display:grid;place-items:center;background:rgba(255,255,255,.2);flex-shrink:0}
.logo svg{width:20px;height:20px;fill:none;stroke:currentColor;stroke-width:2;stroke-linejoin:round}
.ht{min-width:0;flex:1}
.title{margin:0;font-size:16px;font-weight:650;line-height:1.25;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.status{display:flex;align-items:center;gap:6px;font-size:12.5px;opacity:.9;margin-top:2px}
.status::before{content:"";width:8px;height:8px;border-radius:50%;background:#fbbf24;flex-shrink:0}
.status[data-status=connected]::before{background:#34d399}
.status[data-status=offline]::before{background:#f87171}
.x{width:36px;height:36px;border-radius:10px;display:grid;place-items:center;flex-shrink:0}
.sw{max-width:130px;min-width:0;font:inherit;font-size:13px;color:#111827;background:#fff;border:0;border-radius:8px;padding:6px 4px}
.x:hover{background:rgba(255,255,255,.16)}
.x svg{width:20px;height:20px;fill:none;stroke:currentColor;stroke-width:2.2;stroke-linecap:round}
.log{flex:1;overflow-y:auto;overflow-anchor:none;overscroll-behavior:contain;padding:12px 14px 10px;background:var(--lc-soft);
display:flex;flex-direction:column}
.older{flex-shrink:0;height:1px;color:var(--lc-muted);font-size:12px;text-align:center}
.older.loading{height:auto;padding:6px 0}
.older.loading::before{content:"";display:inline-block;width:10px;height:10px;margin-right:6px;vertical-align:-1px;border-radius:50%;
border:2px solid currentColor;border-right-color:transparent;animation:lc-spin .8s linear infinite}
.msg{display:flex;align-items:flex-end;gap:8px;max-width:84%;margin-top:12px}
.msg.cont{margin-top:3px}
.msg.mine{align-self:flex-end}
.msg.system{align-self:center;max-width:90%}
.av{width:28px;height:28px;border-radius:50%;flex-shrink:0;display:grid;place-items:center;font-size:12px;font-weight:700;
background:var(--lc-accent);color:var(--lc-on-accent);text-transform:uppercase;margin-bottom:19px}
.cont .av{visibility:hidden}
.body{display:flex;flex-direction:column;align-items:flex-start;min-width:0}
.mine .body{align-items:flex-end}
.system .body{align-items:center}
.name{font-size:12px;font-weight:600;color:var(--lc-muted);margin:0 0 3px 4px}
.cont .name{display:none}
.bubble{padding:9px 13px;border-radius:18px;background:var(--lc-theirs);white-space:pre-wrap;overflow-wrap:anywhere;max-width:100%}
.bubble a{color:inherit;text-decoration:underline;text-underline-offset:2px}
.theirs .bubble{border-bottom-left-radius:6px}
.mine .bubble{background:var(--lc-accent);color:var(--lc-on-accent);border-bottom-right-radius:6px}
.system .bubble{background:none;color:var(--lc-muted);font-size:12.5px;text-align:center;padding:2px 8px}
.greeting{margin-top:4px}
.msg[data-state=sending] .bubble{opacity:.72}
.msg[data-state=failed] .bubble{opacity:.6}
.meta{display:flex;align-items:center;gap:6px;font-size:11px;color:var(--lc-muted);margin:3px 6px 0;min-height:16px}
.msg[data-state=failed] .meta{color:var(--lc-danger)}
.retry{color:var(--lc-danger);font-weight:650;text-decoration:underline;text-underline-offset:2px;padding:0 2px;border-radius:4px}
.seen{font-size:11px;color:var(--lc-muted);margin:1px 6px 0}
.typing{display:flex;align-items:center;gap:8px;padding:2px 18px 8px;font-size:12px;color:var(--lc-muted);background:var(--lc-soft);flex-shrink:0}
.dots{display:inline-flex;gap:3px}
.dots i{width:5px;height:5px;border-radius:50%;background:currentColor;animation:lc-dot 1.2s infinite ease-in-out}
.dots i:nth-child(2){animation-delay:.15s}.dots i:nth-child(3){animation-delay:.3s}
.error{padding:8px 16px;font-size:12.5px;background:#fef2f2;color:#b91c1c;border-top:1px solid #fecaca;flex-shrink:0}
.dark .error{background:#3a1d1d;color:#fecaca;border-color:#5b2525}
.composer{position:relative;display:flex;align-items:flex-end;gap:8px;padding:10px 12px 8px;border-top:1px solid var(--lc-line);background:var(--lc-bg);flex-shrink:0}
.field{flex:1;display:flex;align-items:flex-end;min-width:0;border:1px solid var(--lc-line);border-radius:22px;background:var(--lc-soft);
padding:0 4px 0 14px;transition:border-color .15s,box-shadow .15s}
.field:focus-within{border-color:var(--lc-accent);box-shadow:0 0 0 3px rgba(79,70,229,.18);box-shadow:0 0 0 3px color-mix(in srgb,var(--lc-accent) 22%,transparent)}
textarea{flex:1;min-width:0;resize:none;border:0;background:transparent;color:inherit;font:inherit;font-size:16px;line-height:20px;
padding:10px 0;margin:0;height:40px;max-height:120px;outline:none}
textarea:focus-visible{outline:none}
textarea::placeholder{color:var(--lc-muted);opacity:1}
.ib{width:36px;height:36px;margin:2px 0;border-radius:50%;display:grid;place-items:center;color:var(--lc-muted);flex-shrink:0}
.ib:hover,.ib[aria-expanded=true]{color:var(--lc-accent)}
.ib svg,.send svg{width:22px;height:22px;fill:none;stroke:currentColor;stroke-width:1.9;stroke-linecap:round;stroke-linejoin:round}
.send{width:42px;height:42px;border-radius:50%;display:grid;place-items:center;background:var(--lc-accent);color:var(--lc-on-accent);
flex-shrink:0;transition:opacity .15s,transform .15s}
.send svg{width:20px;height:20px}
.send.empty{opacity:.45}
.send:not(.empty):hover{transform:scale(1.05)}
.emojis{position:absolute;left:12px;right:12px;bottom:calc(100% + 6px);display:grid;grid-template-columns:repeat(8,1fr);gap:2px;padding:8px;
background:var(--lc-bg);border:1px solid var(--lc-line);border-radius:14px;box-shadow:var(--lc-shadow)}
.emojis button{height:36px;border-radius:8px;font-size:20px;line-height:1;font-family:"Apple Color Emoji","Segoe UI Emoji","Noto Color Emoji",sans-serif}
.emojis button:hover{background:var(--lc-theirs)}
.foot{text-align:center;font-size:11px;color:var(--lc-muted);padding:0 0 7px;background:var(--lc-bg);flex-shrink:0}
.hint{padding:6px 16px;font-size:12.5px;color:var(--lc-danger);background:var(--lc-bg);border-top:1px solid var(--lc-line);flex-shrink:0}
.closed{display:flex;flex-direction:column;align-items:center;gap:8px;padding:12px 16px;border-top:1px solid var(--lc-line);
background:var(--lc-bg);color:var(--lc-muted);font-size:13px;flex-shrink:0}
.new{padding:9px 16px;border-radius:20px;background:var(--lc-accent);color:var(--lc-on-accent);font-weight:600}
.sr{position:absolute!important;width:1px;height:1px;margin:-1px;padding:0;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap;border:0}
@media (max-width:479.98px){
.root.open{inset:0;bottom:0;right:0;left:0}
.root.open .panel{position:fixed;inset:0;width:100vw;height:100vh;height:100dvh;max-height:none;border-radius:0}
.root.open .launcher{display:none}}
@media (prefers-reduced-motion:reduce){.panel,.dots i,.older.loading::before{animation:none}.launcher,.send,.field{transition:none}}
`;

  /** @type {null | {host: HTMLElement, shadow: ShadowRoot, root: HTMLElement, launcher: HTMLElement, badge: HTMLElement,
   *   panel: HTMLElement, statusEl: HTMLElement, log: HTMLElement, older: HTMLElement, greeting: HTMLElement,
   *   typing: HTMLElement, typingText: HTMLElement, seen: HTMLElement, error: HTMLElement, input: HTMLTextAreaElement,
   *   send: HTMLElement, emoji: HTMLElement, emojis: HTMLElement, hint: HTMLElement, closed: HTMLElement,
   *   composer: HTMLElement, io: IntersectionObserver | null}} */
  let ui = null;

  /** @param {string} hex */
  function onAccent(hex) {
    const n = parseInt(hex.slice(1), 16);
    const c = [(n >> 16) & 255, (n >> 8) & 255, n & 255].map((v) => {
      const s = v / 255;
      return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
    });
    const lum = 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
    return lum > 0.45 ? '#111827' : '#ffffff';
  }

  function render() {
    /** @type {Record<string, unknown>} */
    const S = { ...projectSettings, ...pageSettings };
    const lang = String(pageSettings.locale || projectSettings.locale || navigator.language || 'en').toLowerCase();
    locale = lang.startsWith('fr') ? 'fr' : 'en';
    t = STRINGS[locale === 'fr' ? 'fr' : 'en'];
    let theme = String(S.theme || 'light');
    if (theme === 'auto') theme = W.matchMedia && W.matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light';
    const left = /left/.test(String(S.position || ''));
    const accentRaw = String(S.accent_color || S.accentColor || '');
    const accent = /^#[0-9a-fA-F]{6}$/.test(accentRaw) ? accentRaw : '';
    const title = String(S.title || '') || t.title;
    const greetingText = String(S.greeting || '') || t.greeting;

    const host = h('div', { id: 'larachat-widget' });
    const shadow = host.attachShadow({ mode: 'open' });
    try {
      const sheet = new CSSStyleSheet();
      sheet.replaceSync(CSS);
      shadow.adoptedStyleSheets = [sheet];
    } catch (_) {
      shadow.append(h('style', {}, [CSS]));
    }

    const root = h('div', { class: `root ${theme === 'dark' ? 'dark' : 'light'}${left ? ' left' : ''}`, lang: locale });
    if (accent) {
      root.style.setProperty('--lc-accent', accent);
      root.style.setProperty('--lc-on-accent', onAccent(accent));
    }

    const badge = h('span', { class: 'badge', 'data-lc': 'badge', 'aria-hidden': 'true', hidden: '' }, ['0']);
    const launcher = h(
      'button',
      {
        type: 'button',
        class: 'launcher',
        'data-lc': 'launcher',
        'aria-label': t.open,
        'aria-expanded': 'false',
        'aria-haspopup': 'dialog',
        'aria-controls': 'lc-panel',
      },
      [icon(I_CHAT), badge]
    );

    const statusEl = h('div', { class: 'status', 'data-lc': 'status', 'data-status': status, role: 'status' }, [
      tr(status),
    ]);
    const closeBtn = h('button', { type: 'button', class: 'x', 'data-lc': 'close', 'aria-label': t.close }, [icon(I_X)]);
    switcher = /** @type {HTMLSelectElement} */ (
      h('select', { class: 'sw', 'data-lc': 'switcher', 'aria-label': t.conversations, hidden: '' })
    );
    const head = h('div', { class: 'head' }, [
      h('div', { class: 'logo', 'aria-hidden': 'true' }, [icon(I_CHAT)]),
      h('div', { class: 'ht' }, [h('h2', { class: 'title' }, [title]), statusEl]),
      switcher,
      closeBtn,
    ]);

    const older = h('div', { class: 'older', 'data-lc': 'older', 'aria-hidden': 'true', hidden: '' });
    const greeting = h('div', { class: 'msg theirs greeting', 'data-lc': 'greeting' }, [
      h('div', { class: 'av', 'aria-hidden': 'true' }, [title.trim().charAt(0) || 'L']),
      h('div', { class: 'body' }, [h('div', { class: 'name' }, [title]), h('div', { class: 'bubble' }, [greetingText])]),
    ]);
    const log = h(
      'div',
      {
        class: 'log',
        'data-lc': 'messages',
        role: 'log',
        'aria-live': 'polite',
        'aria-relevant': 'additions',
        'aria-label': t.log,
        tabindex: '0',
      },
      [older, greeting]
    );

    const typingText = h('span');
    const typing = h('div', { class: 'typing', 'data-lc': 'typing', 'aria-live': 'polite', hidden: '' }, [
      h('span', { class: 'dots', 'aria-hidden': 'true' }, [h('i'), h('i'), h('i')]),
      typingText,
    ]);
    const seen = h('div', { class: 'seen', 'data-lc': 'seen', hidden: '' }, [t.seen]);
    const error = h('div', { class: 'error', 'data-lc': 'error', role: 'alert', hidden: '' });

    const input = /** @type {HTMLTextAreaElement} */ (
      h('textarea', {
        id: 'lc-input',
        'data-lc': 'input',
        rows: '1',
        placeholder: t.placeholder,
        maxlength: '16000',
        autocomplete: 'off',
        enterkeyhint: 'send',
      })
    );
    const emoji = h('button', {
      type: 'button',
      class: 'ib',
      'data-lc': 'emoji',
      'aria-label': t.emoji,
      'aria-expanded': 'false',
      'aria-controls': 'lc-emojis',
    });
    emoji.append(icon(I_SMILE));
    const send = h('button', { type: 'button', class: 'send empty', 'data-lc': 'send', 'aria-label': t.send }, [
      icon(I_SEND),
    ]);
    const emojis = h('div', { class: 'emojis', id: 'lc-emojis', role: 'group', 'aria-label': t.emojiList, hidden: '' });
    for (const e of EMOJI) {
      const b = h('button', { type: 'button', 'aria-label': e }, [e]);
      b.addEventListener('click', guard(() => insertEmoji(e)));
      emojis.append(b);
    }
    const hint = h('div', { class: 'hint', 'data-lc': 'limit', id: 'lc-limit', 'aria-live': 'polite', hidden: '' });
    const newBtn = h('button', { type: 'button', class: 'new', 'data-lc': 'new-conversation' }, [t.newConversation]);
    const closed = h('div', { class: 'closed', 'data-lc': 'closed', role: 'status', hidden: '' }, [h('span', {}, [t.closed]), newBtn]);
    const composer = h('div', { class: 'composer' }, [
      emojis,
      h('div', { class: 'field' }, [h('label', { class: 'sr', for: 'lc-input' }, [t.inputLabel]), input, emoji]),
      send,
    ]);

    const panel = h(
      'div',
      { class: 'panel', id: 'lc-panel', 'data-lc': 'panel', role: 'dialog', 'aria-label': title, hidden: '' },
      [head, log, typing, error, closed, hint, composer, h('div', { class: 'foot', 'data-lc': 'footer' }, [t.powered])]
    );
    root.append(launcher, panel);
    shadow.append(root);

    ui = {
      host,
      shadow,
      root,
      launcher,
      badge,
      panel,
      statusEl,
      log,
      older,
      greeting,
      typing,
      typingText,
      seen,
      error,
      input,
      send,
      emoji,
      emojis,
      hint,
      closed,
      composer,
      io: null,
    };

    launcher.addEventListener('click', guard(() => setOpen(!isOpen, true)));
    closeBtn.addEventListener('click', guard(() => setOpen(false, true)));
    send.addEventListener('click', guard(() => submit()));
    newBtn.addEventListener('click', guard(() => startNew()));
    switcher.addEventListener('change', guard(() => switchTo(/** @type {HTMLSelectElement} */ (switcher).value)));
    emoji.addEventListener('click', guard(() => toggleEmoji()));
    input.addEventListener(
      'keydown',
      guard((/** @type {KeyboardEvent} */ e) => {
        if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
          e.preventDefault();
          submit();
        }
      })
    );
    input.addEventListener('input', guard(() => onTyped()));
    input.addEventListener('blur', guard(() => stopTyping()));
    root.addEventListener(
      'keydown',
      guard((/** @type {KeyboardEvent} */ e) => {
        if (e.key === 'Tab') return trapFocus(e);
        if (e.key !== 'Escape') return;
        if (ui && !ui.emojis.hidden) {
          toggleEmoji(false);
          ui.emoji.focus();
        } else if (isOpen) setOpen(false, true);
        else return;
        e.stopPropagation();
      })
    );
    if ('IntersectionObserver' in W) {
      ui.io = new IntersectionObserver(
        guard((/** @type {IntersectionObserverEntry[]} */ es) => {
          if (es.some((e) => e.isIntersecting)) return loadOlder();
          return undefined;
        }),
        { root: log, rootMargin: '60px 0px 0px 0px' }
      );
      ui.io.observe(older);
    }

    D.body.append(host);
    setClosed(convClosed);
  }

  /** Full-screen (narrow viewports): the open panel is then a modal dialog. */
  const fullScreen = () => !!W.matchMedia && W.matchMedia('(max-width: 479.98px)').matches;

  /** In the full-screen dialog, Tab and Shift+Tab cycle through its controls. @param {KeyboardEvent} e */
  function trapFocus(e) {
    if (!ui || !isOpen || !fullScreen()) return;
    const els = Array.from(ui.panel.querySelectorAll('button, textarea, a[href], [tabindex="0"]')).filter(
      /** @returns {el is HTMLElement} */ (el) => el instanceof HTMLElement && el.getClientRects().length > 0
    );
    if (!els.length) return;
    const a = ui.shadow.activeElement;
    const first = els[0];
    const last = els[els.length - 1];
    const inside = els.some((el) => el === a);
    if (!inside || (e.shiftKey ? a === first : a === last)) {
      e.preventDefault();
      (e.shiftKey ? last : first).focus();
    }
  }

  function paintBadge() {
    if (!ui) return;
    ui.badge.textContent = unread > 99 ? '99+' : String(unread);
    ui.badge.hidden = unread === 0;
    ui.launcher.setAttribute(
      'aria-label',
      isOpen ? t.minimize : unread ? tr('openUnread', { n: unread }) : t.open
    );
  }

  /** @param {Status} s */
  function setStatus(s) {
    status = s;
    if (!ui) return;
    ui.statusEl.dataset.status = s;
    ui.statusEl.textContent = tr(s === 'unavailable' ? 'unavailableStatus' : s);
  }

  /** Focus on open: the composer, else what the panel offers (new conversation, close). */
  function focusIn() {
    if (!ui) return;
    const to = !ui.composer.hidden ? ui.input : !ui.closed.hidden ? ui.closed.querySelector('button') : ui.panel.querySelector('[data-lc=close]');
    if (to instanceof HTMLElement) to.focus();
  }

  /**
   * The shown conversation was closed (by an agent) or reopened. Closed, the composer gives
   * way to "Start a new conversation": a new one starts only on purpose.
   * @param {boolean} v
   */
  function setClosed(v) {
    const changed = convClosed !== v;
    convClosed = v;
    if (!ui || status === 'unavailable') return;
    ui.closed.hidden = !v;
    ui.composer.hidden = v;
    if (v) {
      ui.hint.hidden = true;
      toggleEmoji(false);
      stopTyping();
    }
    if (isOpen && changed) focusIn();
  }

  /** The visitor chose to start a new conversation: an empty one, started by its first message. */
  function startNew() {
    if (!ui || !convClosed) return;
    const old = convId;
    if (old) sendFrame({ type: 'unsubscribe', id: ++reqSeq, conversation_id: old });
    clearMessages();
    convId = '';
    chosen = '';
    historyOk = true; // nothing to load: a reconnect must not bring the closed one back
    cursorId = NIL_ID;
    cursorSeq = 0;
    setClosed(false);
  }

  /** Loads the visitor's conversations; the switcher shows when there are two or more. */
  async function loadConversations() {
    const g = gen;
    /** @type {ApiResult | null} */
    let r = null;
    try {
      r = await api('GET', 'conversations', { limit: 20 });
    } catch (_) {
      return;
    }
    if (g !== gen || !r || !r.ok || !r.data || !switcher) return;
    convList = r.data.data || [];
    const sw = switcher;
    sw.replaceChildren(
      ...convList.map((c) => {
        const d = c.created_at ? new Date(c.created_at).toLocaleDateString(locale) : '';
        const name = c.subject || tr('conversation', { d });
        const o = /** @type {HTMLOptionElement} */ (h('option', { value: c.id }, [c.status === 'closed' ? `${name} ${t.closedTag}` : name]));
        o.selected = c.id === convId;
        return o;
      })
    );
    sw.hidden = convList.length < 2;
  }

  /** Shows another of the visitor's conversations: its history, live, and replies go there. @param {string} id */
  async function switchTo(id) {
    if (!id || id === convId) return;
    const c = convList.find((x) => x.id === id);
    if (!c) return;
    if (convId) sendFrame({ type: 'unsubscribe', id: ++reqSeq, conversation_id: convId });
    gen++;
    clearMessages();
    chosen = id;
    convId = id;
    setClosed(c.status === 'closed');
    await loadHistory();
    subscribe();
  }

  /** Init was refused for a reason the visitor cannot fix (identity verification): say so. */
  function setUnavailable() {
    if (!ui) return;
    setStatus('unavailable');
    ui.composer.hidden = true;
    ui.closed.hidden = true;
    ui.greeting.hidden = true;
    showError(t.unavailable, 0);
  }

  /** @type {number | undefined} */
  let errorTimer;
  /**
   * @param {string} msg empty hides the banner
   * @param {number} [ms] hide after this long (0: stays)
   */
  function showError(msg, ms = 8000) {
    if (!ui) return;
    clearTimeout(errorTimer);
    ui.error.textContent = msg;
    ui.error.hidden = !msg;
    if (msg && ms) errorTimer = W.setTimeout(() => showError(''), ms);
  }

  function nearBottom() {
    if (!ui) return true;
    const l = ui.log;
    return l.scrollHeight - l.scrollTop - l.clientHeight < 80;
  }
  function scrollBottom() {
    if (ui) ui.log.scrollTop = ui.log.scrollHeight;
  }

  /**
   * @param {boolean} v
   * @param {boolean} [focusLauncher] return focus to the launcher when closing
   */
  function setOpen(v, focusLauncher) {
    if (!ui) {
      wantOpen = v;
      return;
    }
    if (isOpen === v) return;
    isOpen = v;
    if (v && fullScreen()) ui.panel.setAttribute('aria-modal', 'true');
    else ui.panel.removeAttribute('aria-modal');
    ui.panel.hidden = !v;
    ui.root.classList.toggle('open', v);
    ui.launcher.setAttribute('aria-expanded', String(v));
    ui.launcher.replaceChild(icon(v ? I_DOWN : I_CHAT), /** @type {Node} */ (ui.launcher.firstChild));
    if (v) {
      unread = 0;
      paintBadge();
      scrollBottom();
      focusIn();
      maybeRead();
      reobserve();
      emit('open');
    } else {
      toggleEmoji(false);
      stopTyping();
      paintBadge();
      const a = ui.shadow.activeElement;
      if (focusLauncher || (a && ui.panel.contains(a))) ui.launcher.focus();
      emit('close');
    }
  }

  /** @param {boolean} [force] */
  function toggleEmoji(force) {
    if (!ui) return;
    const show = force === undefined ? ui.emojis.hidden : force;
    ui.emojis.hidden = !show;
    ui.emoji.setAttribute('aria-expanded', String(show));
    if (show) /** @type {HTMLElement | null} */ (ui.emojis.firstElementChild)?.focus();
  }

  /** @param {string} e */
  function insertEmoji(e) {
    if (!ui) return;
    const i = ui.input;
    const s = i.selectionStart ?? i.value.length;
    const end = i.selectionEnd ?? s;
    i.setRangeText(e, s, end, 'end');
    toggleEmoji(false);
    i.focus();
    onTyped();
  }

  function autosize() {
    if (!ui) return;
    const i = ui.input;
    i.style.height = '';
    if (i.scrollHeight > i.clientHeight) i.style.height = `${Math.min(i.scrollHeight, 120)}px`;
    const over = overBy(i.value);
    ui.send.classList.toggle('empty', !i.value.trim() || over > 0);
    ui.hint.hidden = !over;
    ui.hint.textContent = over ? tr('tooLong', { n: over }) : '';
    if (over) {
      i.setAttribute('aria-invalid', 'true');
      i.setAttribute('aria-describedby', 'lc-limit');
    } else {
      i.removeAttribute('aria-invalid');
      i.removeAttribute('aria-describedby');
    }
  }

  /** How many characters (code points) `text` must lose to fit the server's byte limit (0: fits). @param {string} text */
  function overBy(text) {
    let extra = maxBytes ? utf8Len(text) - maxBytes : 0;
    if (extra <= 0) return 0;
    let n = 0;
    const cps = Array.from(text);
    for (let k = cps.length - 1; k >= 0 && extra > 0; k--, n++) extra -= utf8Len(cps[k]);
    return n;
  }

  // ---------------------------------------------------------------------------------------------
  // Messages: insert by id, de-duplicate by id and client_msg_id
  // ---------------------------------------------------------------------------------------------

  /**
   * @param {{id: string | null, cmid: string | null, text: string, mine: boolean, sender: Actor | null, ts: number,
   *   state: Rec['state'], m: Message | null}} o
   * @returns {Rec}
   */
  function makeRec(o) {
    const system = !!o.sender && o.sender.type === 'system';
    const el = h('div', {
      class: `msg ${o.mine ? 'mine' : system ? 'system' : 'theirs'}`,
      'data-lc': 'message',
      'data-mine': String(o.mine),
    });
    const body = h('div', { class: 'body' });
    if (!o.mine && !system && o.sender) {
      const name = actorName(o.sender);
      el.append(h('div', { class: 'av', 'aria-hidden': 'true' }, [name.trim().charAt(0) || '?']));
      if (o.sender.type !== 'end_user' || o.sender.name) body.append(h('div', { class: 'name' }, [name]));
    }
    const meta = h('div', { class: 'meta' });
    body.append(h('div', { class: 'bubble' }, linkify(o.text)), meta);
    el.append(body);
    /** @type {Rec} */
    const rec = {
      id: o.id,
      cmid: o.cmid,
      text: o.text,
      mine: o.mine,
      key: o.mine ? 'me' : o.sender ? `${o.sender.type}:${o.sender.id}` : '?',
      ts: o.ts,
      state: o.state,
      m: o.m,
      seq: ++seq,
      req: null,
      timer: undefined,
      el,
      body,
      meta,
      reason: '',
      final: false,
    };
    paint(rec);
    return rec;
  }

  /** @param {Rec} rec refreshes data-id, data-state and the meta line */
  function paint(rec) {
    const el = rec.el;
    if (rec.id) el.dataset.id = rec.id;
    if (rec.cmid) el.dataset.clientMsgId = rec.cmid;
    el.dataset.state = rec.state;
    const meta = rec.meta;
    meta.textContent = '';
    const time = h('time', { datetime: new Date(rec.ts).toISOString() }, [fmtTime(rec.ts)]);
    if (rec.state === 'sending') meta.append(t.sending);
    else if (rec.state === 'failed') {
      meta.append(t.failed);
      if (rec.reason) meta.append(' · ', h('span', { 'data-lc': 'reason' }, [rec.reason]));
      if (!rec.final) {
        const b = h('button', { type: 'button', class: 'retry', 'data-lc': 'retry', 'aria-label': t.retryLabel }, [
          t.retry,
        ]);
        b.addEventListener('click', guard(() => retry(rec)));
        meta.append(' · ', b);
      }
    } else meta.append(time);
  }

  /** Puts rec at its place in `recs` and in the DOM: by id, unsent ones last. @param {Rec} rec */
  function place(rec) {
    if (!ui) return;
    const old = recs.indexOf(rec);
    if (old >= 0) recs.splice(old, 1);
    let j = recs.length;
    if (rec.id) {
      const id = rec.id;
      while (j > 0 && (!recs[j - 1].id || /** @type {string} */ (recs[j - 1].id) > id)) j--;
    }
    recs.splice(j, 0, rec);
    const next = recs[j + 1];
    ui.log.insertBefore(rec.el, next ? next.el : null);
    group(j);
    group(j + 1);
    if (old >= 0 && old !== j) group(old);
    ui.greeting.hidden = recs.length > 0;
  }

  /** Consecutive messages of one sender within 5 minutes form a group (one name, one avatar). @param {number} k */
  function group(k) {
    const r = recs[k];
    if (!r) return;
    const p = recs[k - 1];
    r.el.classList.toggle('cont', !!p && p.key === r.key && Math.abs(r.ts - p.ts) < 300000);
  }

  /**
   * A stored message from history, a `message` event, an ack or a POST answer.
   * @param {Message} m
   * @param {boolean} live new (socket/ack): counts as unread, emits 'message'
   * @returns {Rec | null}
   */
  function upsert(m, live) {
    if (!m || typeof m.id !== 'string' || !ui) return null;
    const known = byId.get(m.id);
    if (known) {
      if (known.state !== 'sent') {
        known.state = 'sent';
        paint(known);
      }
      return known;
    }
    const mine = isMineActor(m.sender);
    if (mine && m.client_msg_id) {
      const p = byCmid.get(m.client_msg_id);
      if (p) return stored(p, m);
    }
    // A replayed message older than the loaded page would leave a hole; paging will bring it.
    const first = recs.find((r) => r.id);
    if (live && hasMore && first && first.id && m.id < first.id) return null;
    const rec = makeRec({
      id: m.id,
      cmid: m.client_msg_id || null,
      text: String(m.text),
      mine,
      sender: m.sender,
      ts: Date.parse(m.created_at) || Date.now(),
      state: 'sent',
      m,
    });
    byId.set(m.id, rec);
    held(m);
    const stick = nearBottom();
    place(rec);
    if (live) {
      if (!mine) {
        clearTyper(m.sender);
        if (!isOpen) {
          unread++;
          paintBadge();
        }
      }
      if (stick || mine) scrollBottom();
      emit('message', m);
      if (!mine) maybeRead();
    }
    updateSeen();
    return rec;
  }

  /**
   * An own unsent message got stored (ack, POST answer or its `message` event).
   * @param {Rec} rec
   * @param {Message} m
   */
  function stored(rec, m) {
    clearTimeout(rec.timer);
    rec.timer = undefined;
    if (rec.req !== null) reqs.delete(rec.req);
    rec.req = null;
    dropFromOutbox(rec);
    const other = byId.get(m.id);
    if (other && other !== rec) {
      // Already shown under its id: drop the duplicate bubble.
      const i = recs.indexOf(rec);
      if (i >= 0) recs.splice(i, 1);
      rec.el.remove();
      if (rec.cmid) byCmid.delete(rec.cmid);
      return other;
    }
    const isNew = !rec.id;
    rec.state = 'sent';
    if (isNew) {
      rec.id = m.id;
      rec.m = m;
      rec.ts = Date.parse(m.created_at) || rec.ts;
      byId.set(m.id, rec);
      held(m);
      if (rec.cmid) byCmid.delete(rec.cmid);
      place(rec);
    }
    paint(rec);
    if (isNew) {
      scrollBottom();
      emit('message', m);
    }
    updateSeen();
    return rec;
  }

  /** @param {Rec} rec */
  function dropFromOutbox(rec) {
    const i = outbox.indexOf(rec);
    if (i >= 0) outbox.splice(i, 1);
  }

  /**
   * @param {Rec} rec
   * @param {ApiErr | null} [err] the server's refusal: its message is shown; a refusal that is
   *   not retryable (too long, forbidden…) offers no Retry, which could only fail again
   */
  function fail(rec, err) {
    if (rec.id) return;
    clearTimeout(rec.timer);
    rec.timer = undefined;
    if (rec.req !== null) reqs.delete(rec.req);
    rec.req = null;
    dropFromOutbox(rec);
    rec.state = 'failed';
    rec.reason = (err && typeof err.message === 'string' && err.message) || '';
    rec.final = !!err && err.retryable === false;
    paint(rec);
  }

  /** @param {Rec} rec resend with the same client_msg_id */
  function retry(rec) {
    if (rec.state !== 'failed' || rec.id || rec.final) return;
    rec.state = 'sending';
    paint(rec);
    outbox.push(rec);
    outbox.sort((a, b) => a.seq - b.seq);
    flush();
    if (ui) ui.input.focus();
  }

  function clearMessages() {
    for (const r of recs) {
      clearTimeout(r.timer);
      r.el.remove();
    }
    recs.length = 0;
    historyOk = false;
    cursorId = '';
    cursorSeq = 0;
    ahead.clear();
    gapSince = 0;
    byId.clear();
    byCmid.clear();
    outbox.length = 0;
    reqs.clear();
    hasMore = false;
    unread = 0;
    lastReadSent = '';
    agentReadMax = '';
    for (const v of typers.values()) clearTimeout(v.timer);
    typers.clear();
    renderTyping();
    paintBadge();
    updateOlder();
    if (ui) {
      ui.seen.hidden = true;
      ui.greeting.hidden = false;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Sending
  // ---------------------------------------------------------------------------------------------

  function submit() {
    if (!ui || convClosed) return;
    const text = ui.input.value;
    if (!text.trim()) return;
    if (overBy(text)) {
      autosize(); // shows why it is not sent; the text stays to be shortened
      return;
    }
    ui.input.value = '';
    autosize();
    toggleEmoji(false);
    stopTyping();
    const cmid = newCmid();
    const rec = makeRec({ id: null, cmid, text, mine: true, sender: null, ts: Date.now(), state: 'sending', m: null });
    byCmid.set(cmid, rec);
    place(rec);
    scrollBottom();
    outbox.push(rec);
    updateSeen();
    flush();
  }

  /** Sends what the outbox holds, if the connection allows; otherwise the messages wait. */
  function flush() {
    if (!outbox.length || !authed || !ws) return;
    if (!convId || convClosed) {
      // The first message starts the conversation over HTTP; the others wait for it.
      if (!posting) postFirst(outbox[0]).catch(warn);
      return;
    }
    for (const rec of outbox) if (rec.req === null) transmit(rec);
  }

  /** @param {Rec} rec */
  function transmit(rec) {
    const id = ++reqSeq;
    if (!sendFrame({ type: 'send', id, conversation_id: convId, client_msg_id: rec.cmid, text: rec.text })) return;
    rec.req = id;
    reqs.set(id, rec);
    clearTimeout(rec.timer);
    rec.timer = W.setTimeout(
      guard(() => {
        if (rec.state === 'sending' && rec.req === id) fail(rec);
      }),
      10000
    );
  }

  /** @param {Rec} rec */
  async function postFirst(rec) {
    posting = true;
    const g = gen;
    /** @type {ApiResult | null} */
    let r = null;
    let netErr = false;
    try {
      r = await api('POST', 'messages', null, { text: rec.text, client_msg_id: rec.cmid }, { timeout: 10000 });
    } catch (_) {
      netErr = true;
    }
    posting = false;
    if (g !== gen || rec.id) return;
    if (r && r.ok && r.data && r.data.message) {
      const c = /** @type {Conversation | null} */ (r.data.conversation || null);
      const cid = c ? c.id : r.data.message.conversation_id;
      const changed = cid !== convId;
      convId = cid;
      setClosed(false);
      stored(rec, r.data.message);
      if (changed) subscribe();
    } else if (netErr && (!authed || navigator.onLine === false)) {
      // Went offline meanwhile: it stays `sending` and goes out again after reconnecting.
    } else {
      fail(rec, r && r.data && r.data.error);
    }
    flush();
  }

  // ---------------------------------------------------------------------------------------------
  // Typing, reads, "Seen"
  // ---------------------------------------------------------------------------------------------

  function onTyped() {
    autosize();
    if (!ui || !convId || convClosed || !authed) return;
    if (!ui.input.value.trim()) {
      stopTyping();
      return;
    }
    const now = Date.now();
    if (now - typingSentAt >= 3000) {
      typingSentAt = now;
      typingOn = true;
      sendFrame({ type: 'typing', conversation_id: convId, state: 'start' });
    }
    clearTimeout(typingIdle);
    typingIdle = W.setTimeout(guard(stopTyping), 5000);
  }

  function stopTyping() {
    clearTimeout(typingIdle);
    if (typingOn && convId && authed) sendFrame({ type: 'typing', conversation_id: convId, state: 'stop' });
    typingOn = false;
    typingSentAt = 0;
  }

  /** @param {Actor} a */
  const actorKey = (a) => `${a.type}:${a.id}`;

  /** @param {Actor} a */
  function clearTyper(a) {
    const k = a && actorKey(a);
    const v = k && typers.get(k);
    if (!v) return;
    clearTimeout(v.timer);
    typers.delete(/** @type {string} */ (k));
    renderTyping();
  }

  /**
   * @param {Actor} a
   * @param {string} state
   */
  function onTyping(a, state) {
    if (!a || isMineActor(a)) return;
    clearTyper(a);
    if (state === 'start') {
      const k = actorKey(a);
      typers.set(k, {
        name: actorName(a),
        timer: W.setTimeout(() => {
          typers.delete(k);
          renderTyping();
        }, 6000),
      });
    }
    renderTyping();
  }

  function renderTyping() {
    if (!ui) return;
    const first = typers.values().next();
    ui.typing.hidden = first.done === true;
    ui.typingText.textContent = first.done ? '' : tr('typing', { name: first.value.name });
  }

  /** Sends `read` for the newest message when the visitor can see new messages from others. */
  function maybeRead() {
    if (!isOpen || D.visibilityState === 'hidden' || !authed || !convId) return;
    let newest = '';
    let fromOthers = false;
    for (let i = recs.length - 1; i >= 0; i--) {
      const r = recs[i];
      if (!r.id || !r.m || r.m.conversation_id !== convId || r.id <= lastReadSent) continue;
      if (!newest) newest = r.id;
      if (!r.mine) {
        fromOthers = true;
        break;
      }
    }
    if (!newest || !fromOthers) return;
    if (sendFrame({ type: 'read', id: ++reqSeq, conversation_id: convId, message_id: newest })) lastReadSent = newest;
  }

  /** "Seen" goes under the visitor's last own message once an agent or bot has read it. */
  function updateSeen() {
    if (!ui) return;
    let last = null;
    for (let i = recs.length - 1; i >= 0; i--) {
      if (recs[i].mine) {
        last = recs[i];
        break;
      }
    }
    const show = !!last && !!last.id && !!agentReadMax && agentReadMax >= last.id;
    if (show && last) last.body.append(ui.seen);
    ui.seen.hidden = !show;
  }

  // ---------------------------------------------------------------------------------------------
  // History
  // ---------------------------------------------------------------------------------------------

  function updateOlder() {
    if (!ui) return;
    ui.older.hidden = !hasMore;
    ui.older.classList.toggle('loading', loadingOlder);
    ui.older.textContent = loadingOlder ? t.older : '';
  }

  /** Re-arms the observer so that a sentinel still in view fires again. */
  function reobserve() {
    if (ui && ui.io) {
      ui.io.unobserve(ui.older);
      ui.io.observe(ui.older);
    }
  }

  async function loadHistory() {
    const g = gen;
    /** @type {ApiResult | null} */
    let r = null;
    try {
      r = await api('GET', 'messages', chosen ? { limit: 30, conversation_id: chosen } : { limit: 30 });
    } catch (_) {
      /* network */
    }
    if (g !== gen) return;
    if (!r || !r.ok || !r.data) {
      showError(t.historyError);
      return;
    }
    const c = /** @type {Conversation | null} */ (r.data.conversation || null);
    if (c && !convId) {
      convId = c.id;
      setClosed(c.status === 'closed');
    }
    historyOk = true;
    showError('');
    hasMore = !!r.data.has_more;
    /** @type {Message[]} */
    const page = r.data.data || [];
    for (const m of page) upsert(m, false);
    // The newest page is complete (the server fills any gap in it): the cursor starts at its
    // newest message if it has no starting point yet.
    const last = page[page.length - 1];
    if (last && !cursorId && Number(last.seq) > 0) {
      cursorSeq = Number(last.seq) - 1;
      moveCursor(last.id, Number(last.seq));
    } else if (!last && !cursorId && !hasMore) {
      // Nothing stored yet: the cursor is before the first message.
      cursorId = NIL_ID;
      cursorSeq = 0;
      advance();
    }
    updateOlder();
    scrollBottom();
  }

  async function loadOlder() {
    if (!ui || loadingOlder || !hasMore || !isOpen) return;
    const first = recs.find((x) => x.id);
    if (!first || !first.id) return;
    loadingOlder = true;
    updateOlder();
    const g = gen;
    /** @type {ApiResult | null} */
    let r = null;
    try {
      r = await api('GET', 'messages', chosen ? { before: first.id, limit: 30, conversation_id: chosen } : { before: first.id, limit: 30 });
    } catch (_) {
      /* network: try again on the next scroll */
    }
    loadingOlder = false;
    if (g !== gen) return;
    updateOlder();
    if (r && r.ok && r.data) {
      const log = ui.log;
      const h0 = log.scrollHeight;
      const top = log.scrollTop;
      for (const m of r.data.data || []) upsert(m, false);
      hasMore = !!r.data.has_more;
      updateOlder();
      log.scrollTop = top + (log.scrollHeight - h0);
    } else {
      showError(t.historyError);
      return;
    }
    reobserve();
  }

  // ---------------------------------------------------------------------------------------------
  // Realtime socket
  // ---------------------------------------------------------------------------------------------

  /** @param {Record<string, unknown>} f */
  function sendFrame(f) {
    if (!ws || ws.readyState !== 1) return false;
    try {
      ws.send(JSON.stringify(f));
      return true;
    } catch (_) {
      return false;
    }
  }

  function wsUrl() {
    const u = new URL(realtimePath, `${base}/`);
    u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
    return u.href;
  }

  function connect() {
    clearTimeout(reconnectTimer);
    if (ws || !token || stopped || !ui) return;
    /** @type {WebSocket} */
    let sock;
    try {
      sock = new WebSocket(wsUrl(), 'larachat.v1.json');
    } catch (e) {
      warn('cannot open the socket', e);
      scheduleReconnect();
      return;
    }
    ws = sock;
    authed = false;
    setStatus(attempt ? 'reconnecting' : 'connecting');
    sock.onopen = guard(() => {
      if (ws !== sock) return;
      lastRx = Date.now();
      sendFrame({ type: 'auth', id: ++reqSeq, token });
    });
    sock.onmessage = guard((/** @type {MessageEvent} */ ev) => {
      if (ws !== sock || typeof ev.data !== 'string') return;
      onFrame(JSON.parse(ev.data));
    });
    sock.onclose = guard((/** @type {CloseEvent} */ ev) => {
      if (ws === sock) onClosed(ev.code);
    });
    sock.onerror = () => {
      /* a close event follows */
    };
  }

  /** Forgets the current socket (its late events are ignored); unacked sends go back to waiting. */
  function detach() {
    const s = ws;
    ws = null;
    authed = false;
    pingAt = 0;
    clearInterval(hbTimer);
    for (const rec of outbox) {
      clearTimeout(rec.timer);
      rec.timer = undefined;
      rec.req = null;
    }
    reqs.clear();
    if (typingOn) typingOn = false;
    return s;
  }

  /** @param {boolean} reconnect */
  function drop(reconnect) {
    const s = detach();
    if (s) {
      try {
        s.close(1000);
      } catch (_) {
        /* already closing */
      }
    }
    if (reconnect) scheduleReconnect();
  }

  /** @param {number} code */
  function onClosed(code) {
    detach();
    if (code === 4001 && !reinitUsed) {
      // Session expired or invalid: one fresh init, then connect again.
      reinitUsed = true;
      setStatus('reconnecting');
      reinit()
        .then((ok) => (ok ? connect() : fatal()))
        .catch(warn);
      return;
    }
    if (code >= 4000 && code <= 4099) {
      fatal();
      return;
    }
    if (offline) {
      setStatus('offline');
      return;
    }
    scheduleReconnect();
  }

  function fatal() {
    stopped = true;
    setStatus('offline');
    showError(t.unavailable, 0);
  }

  function scheduleReconnect() {
    clearTimeout(reconnectTimer);
    if (stopped) return;
    const delay = Math.random() * Math.min(30000, 500 * 2 ** Math.min(attempt, 16));
    attempt++;
    setStatus(offline ? 'offline' : 'reconnecting');
    reconnectTimer = W.setTimeout(guard(connect), delay);
  }

  function subscribe() {
    if (!authed || !convId) return;
    const id = ++reqSeq;
    /** @type {Record<string, unknown>} */
    const f = { type: 'subscribe', id, conversation_id: convId };
    if (!cursorId) startCursor();
    if (cursorId) f.after = cursorId;
    if (sendFrame(f)) {
      subReq = id;
      subResumes = !!cursorId;
    }
  }

  /** A held message with a `seq`: the cursor moves over it once everything below it is held. @param {Message} m */
  function held(m) {
    const n = Number(m.seq);
    if (!(n > cursorSeq)) return;
    ahead.set(n, m.id);
    advance();
  }

  function advance() {
    if (!cursorId) return;
    for (let id = ahead.get(cursorSeq + 1); id; id = ahead.get(cursorSeq + 1)) {
      ahead.delete(cursorSeq + 1);
      cursorSeq += 1;
      cursorId = id;
    }
  }

  /** Sets the cursor to message (id, n) if that moves it forward. @param {string} id @param {number} n */
  function moveCursor(id, n) {
    if (!(n > cursorSeq)) return;
    cursorId = id;
    cursorSeq = n;
    for (const k of ahead.keys()) if (k <= n) ahead.delete(k);
    advance();
  }

  /** No starting point yet (history did not load): start at the oldest message held. */
  function startCursor() {
    let low = 0;
    for (const k of ahead.keys()) if (!low || k < low) low = k;
    const id = low && ahead.get(low);
    if (id) {
      cursorSeq = low - 1;
      moveCursor(id, low);
    }
  }

  /** A replay that ended (`subscribed` after `after`) is complete: the cursor jumps to the newest message held. */
  function replayComplete() {
    let top = 0;
    for (const k of ahead.keys()) if (k > top) top = k;
    const id = top && ahead.get(top);
    if (id) moveCursor(id, top);
  }

  /**
   * A live event can be lost while the socket stays up; if the cursor stays behind a held
   * message for 2 s, subscribe again from it (the server replays what is missing and never
   * doubles live events). @param {number} now
   */
  function healGap(now) {
    if (!cursorId || ahead.size === 0) {
      gapSince = 0;
      return;
    }
    if (!gapSince) gapSince = now;
    else if (now - gapSince >= 2000) {
      gapSince = 0;
      subscribe();
    }
  }

  function heartbeat() {
    if (!ws || !authed) return;
    const now = Date.now();
    healGap(now);
    if (pingAt) {
      if (now - pingAt > 10000) drop(true); // no pong: the connection is dead
    } else if (now - lastRx >= hbMs) {
      pingAt = now;
      sendFrame({ type: 'ping', id: ++reqSeq });
    }
  }

  /** @param {any} f */
  function onFrame(f) {
    if (!f || typeof f !== 'object') return;
    lastRx = Date.now();
    pingAt = 0;
    const forUs = !f.conversation_id || !convId || f.conversation_id === convId;
    switch (f.type) {
      case 'auth_ok': {
        authed = true;
        attempt = 0;
        reinitUsed = false;
        hbMs = Math.max(5000, Number(f.limits && f.limits.heartbeat_ms) || 25000);
        clearInterval(hbTimer);
        hbTimer = W.setInterval(guard(heartbeat), 1000);
        const a = f.session && f.session.actor;
        if (!userId && a && a.type === 'end_user') userId = String(a.id);
        setStatus('connected');
        if (!historyOk) loadHistory().catch(warn);
        subscribe();
        flush();
        maybeRead();
        break;
      }
      case 'subscribed':
        if (f.id === subReq) {
          if (subResumes) replayComplete();
          maybeRead();
        }
        break;
      case 'message':
        if (f.message) upsert(f.message, true);
        break;
      case 'ack': {
        const m = f.message;
        const rec = reqs.get(f.id) || (m && m.client_msg_id ? byCmid.get(m.client_msg_id) : undefined);
        if (rec && m) stored(rec, m);
        else if (m) upsert(m, true);
        break;
      }
      case 'error': {
        const rec = typeof f.id === 'number' ? reqs.get(f.id) : undefined;
        if (rec) fail(rec, f);
        else if (f.id === subReq && f.code === 'not_found') {
          setClosed(true); // gone: the visitor starts a new conversation
        }
        break;
      }
      case 'read':
        if (forUs && f.reader && f.reader.type !== 'end_user' && typeof f.message_id === 'string') {
          if (f.message_id > agentReadMax) agentReadMax = f.message_id;
          updateSeen();
        }
        break;
      case 'typing':
        if (forUs) onTyping(f.actor, f.state);
        break;
      case 'conversation':
        if (f.conversation && f.conversation.id === convId) setClosed(f.conversation.status === 'closed');
        break;
      default:
      // pong and unknown frames: nothing to do (liveness was noted above)
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Boot, identify, public API
  // ---------------------------------------------------------------------------------------------

  let chain = Promise.resolve();
  /** Runs session-changing steps one after the other. @param {() => Promise<void>} fn */
  function serial(fn) {
    chain = chain.then(fn).catch(warn);
    return chain;
  }

  function domReady() {
    return new Promise((res) => {
      if (D.body) res(undefined);
      else D.addEventListener('DOMContentLoaded', () => res(undefined), { once: true });
    });
  }

  async function boot() {
    if (ui) return;
    if (!apiKey || !base) {
      warn(!apiKey ? 'window.LaraChatConfig.apiKey is missing' : 'cannot find the Lara Chat base URL');
      return;
    }
    // The server may be restarting: retry with jittered exponential back-off (1 s base, ×2,
    // 30 s cap). A refused origin or key renders nothing; a refused identity renders a
    // launcher whose panel says chat is unavailable (the page's own buttons still open it).
    for (let n = 0; ; n++) {
      const r = await init(true);
      if (r === 'ok') break;
      if (r === 'refused') return;
      if (r === 'unavailable') {
        await domReady();
        render();
        setUnavailable();
        if (wantOpen) setOpen(true);
        return;
      }
      const cap = Math.min(30000, 1000 * 2 ** Math.min(n, 5));
      await new Promise((res) => W.setTimeout(res, cap / 2 + (Math.random() * cap) / 2));
    }
    await domReady();
    render();
    await loadHistory();
    loadConversations().catch(warn);
    W.addEventListener(
      'offline',
      guard(() => {
        offline = true;
        clearTimeout(reconnectTimer);
        drop(false);
        setStatus('offline');
      })
    );
    W.addEventListener(
      'online',
      guard(() => {
        offline = false;
        attempt = 0;
        if (!ws && !stopped) connect();
      })
    );
    D.addEventListener('visibilitychange', guard(maybeRead));
    offline = navigator.onLine === false;
    if (offline) setStatus('offline');
    else connect();
    if (wantOpen) setOpen(true);
    ready = true;
    emit('ready');
  }

  /** @param {LaraChatUser} u */
  async function identify(u) {
    user = { ...u };
    if (!ui) return boot();
    if (status === 'unavailable') {
      // The first identity was refused: try this one from the start.
      ui.host.remove();
      ui = null;
      wantOpen = isOpen;
      isOpen = false;
      status = 'connecting';
      return boot();
    }
    if ((await init(true)) !== 'ok') return undefined; // keep the current session
    gen++;
    drop(false);
    clearTimeout(reconnectTimer);
    stopped = false;
    attempt = 0;
    posting = false;
    showError('');
    clearMessages();
    chosen = '';
    await loadHistory();
    loadConversations().catch(warn);
    if (!offline) connect();
    return undefined;
  }

  /** @type {LaraChatGlobal} */
  const publicApi = {
    _loaded: true,
    base,
    config: cfg,
    open: guard(() => setOpen(true)),
    close: guard(() => setOpen(false)),
    identify: guard((/** @type {LaraChatUser} */ u) => {
      if (!u || typeof u !== 'object' || !u.identifier) {
        warn('identify() needs an object with an identifier');
        return;
      }
      if (!ui) user = { ...u }; // a first init still retrying uses it
      serial(() => identify(u));
    }),
    on: guard((/** @type {string} */ ev, /** @type {Function} */ fn) => {
      if (typeof fn !== 'function' || !listeners[ev]) return;
      listeners[ev].push(fn);
      if (ev === 'ready' && ready) W.setTimeout(() => emit2(fn), 0);
    }),
    off: guard((/** @type {string} */ ev, /** @type {Function} */ fn) => {
      const l = listeners[ev];
      const i = l ? l.indexOf(fn) : -1;
      if (l && i >= 0) l.splice(i, 1);
    }),
    _state: () => ({
      connected: authed,
      conversationId: convId || null,
      userId: userId || null,
      messages: recs.length,
    }),
  };

  /** @param {Function} fn */
  function emit2(fn) {
    try {
      fn();
    } catch (e) {
      warn("a 'ready' listener threw", e);
    }
  }

  try {
    const queued = (stub && Array.isArray(stub.q) && stub.q) || [];
    W.LaraChat = publicApi;
    // identify() calls made before loading set the user of the very first init.
    for (const [m, args] of queued) {
      if (m === 'identify' && args[0] && typeof args[0] === 'object') user = { .../** @type {LaraChatUser} */ (args[0]) };
    }
    for (const [m, args] of queued) {
      if (m === 'open') wantOpen = true;
      else if (m === 'close') wantOpen = false;
      else if (m === 'on') /** @type {Function} */ (publicApi.on)(...args);
    }
    serial(boot);
  } catch (e) {
    warn('failed to start', e);
  }
})();
