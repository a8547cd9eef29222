// @ts-check
// Lara Chat demo agent inbox: the Client API for lists and history, the realtime socket as
// {type: "agent", id: "demo-agent", name: "Demo Agent"} for live messages, typing, read markers
// and replies, assignment ("Assign to me" / "Unassign": PATCH assignee), and the project's
// inbox feed (new conversations, message previews, changes and assignments, end users'
// presence: no polling). Both with a short-lived agent token from the server (POST tokenUrl, renewed a
// minute before it expires, or when refused): no secret key is ever in the page.
(() => {
  'use strict';

  /** @typedef {{type: string, id: string, name?: string | null}} Actor */
  /** @typedef {{id: string, seq?: number, conversation_id: string, sender: Actor, text: string, client_msg_id?: string | null, created_at: string}} Message */
  /**
   * @typedef {{id: string, subject?: string | null, status: string, members: string[], created_at: string,
   *   updated_at: string, last_message_id?: string | null, assignee?: string | null}} Conversation
   */
  /** @typedef {{key: string, id: string | null, cmid: string | null, m: Message | null, text: string, state: string, el: HTMLElement}} Row */

  const ACTOR = { type: 'agent', id: 'demo-agent', name: 'Demo Agent' };
  const cfg = window.LaraChatDemo || {};
  const tokenUrl = String(cfg.tokenUrl || '');
  let token = '';
  /** @type {Promise<string> | null} */
  let fetching = null;
  /** @type {number | undefined} */
  let renewTimer;
  const D = document;

  /** @param {string} sel */
  function $(sel) {
    const el = D.querySelector(sel);
    if (!(el instanceof HTMLElement)) throw new Error(`missing ${sel}`);
    return el;
  }
  const listEl = $('[data-lc=agent-conversations]');
  const emptyEl = $('#empty');
  const paneEl = $('#pane');
  const titleEl = $('#conv-title');
  const subEl = $('#conv-sub');
  const logEl = $('[data-lc=agent-messages]');
  const typingEl = $('[data-lc=agent-typing]');
  const statusEl = $('[data-lc=agent-status]');
  const input = /** @type {HTMLTextAreaElement} */ ($('[data-lc=agent-input]'));
  const sendBtn = $('[data-lc=agent-send]');
  const closeBtn = $('#close-conv');
  const assignBtn = $('#assign-conv');

  /** @type {Conversation[]} */
  let convs = [];
  let openId = '';
  /** @type {Row[]} */
  let rows = [];
  /** @type {Map<string, string>} end user id → name */
  const names = new Map();
  /** @type {Set<string>} end users online now (inbox feed presence) */
  const online = new Set();
  /** @type {Map<string, string>} conversation id → newest message id seen here */
  const seenUpTo = new Map();
  /** @type {WebSocket | null} */
  let ws = null;
  let authed = false;
  let attempt = 0;
  let reqSeq = 0;
  /** @type {Map<number, Row>} */
  const pending = new Map();
  let typingAt = 0;
  /** @type {number | undefined} */
  let typingIdle;
  /** @type {number | undefined} */
  let visitorTyping;
  let lastRead = '';

  /**
   * @param {string} tag
   * @param {Record<string, string>} [attrs]
   * @param {(Node | string)[]} [kids]
   */
  function h(tag, attrs, kids) {
    const el = D.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
    for (const c of kids || []) el.append(c);
    return el;
  }

  /** @param {string} ts */
  const time = (ts) => {
    const d = new Date(ts);
    return d.toDateString() === new Date().toDateString()
      ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
      : d.toLocaleDateString([], { day: 'numeric', month: 'short' });
  };

  const cmid = () =>
    typeof crypto.randomUUID === 'function' ? `agent-${crypto.randomUUID()}` : `agent-${Date.now()}-${Math.random().toString(36).slice(2)}`;

  /**
   * @param {string} method
   * @param {string} path
   * @param {unknown} [body]
   */
  async function api(method, path, body, retried = false) {
    /** @type {Record<string, string>} */
    const headers = { authorization: `Bearer ${token || (await freshToken())}` };
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(`/api/v1${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    if (res.status === 401 && !retried) {
      token = '';
      return api(method, path, body, true);
    }
    const data = await res.json().catch(() => null);
    if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status} ${data && data.error ? data.error.code : ''}`);
    return data;
  }

  /** A new agent token from the server; one request at a time. */
  function freshToken() {
    if (!fetching) {
      fetching = (async () => {
        try {
          const res = await fetch(tokenUrl, { method: 'POST' });
          const data = await res.json().catch(() => null);
          if (!res.ok || !data || !data.token) throw new Error(`agent token: HTTP ${res.status}`);
          token = String(data.token);
          const left = new Date(data.expires_at).getTime() - Date.now();
          clearTimeout(renewTimer);
          renewTimer = window.setTimeout(freshToken, Math.max(5000, left - 60000));
          return token;
        } finally {
          fetching = null;
        }
      })();
    }
    return fetching;
  }

  /** @param {string} s */
  function setStatus(s) {
    statusEl.textContent = s;
    statusEl.dataset.status = authed ? 'connected' : 'offline';
  }

  // ------------------------------------------------------------------------------------------
  // Conversation list
  // ------------------------------------------------------------------------------------------

  /** @param {Conversation} c */
  function label(c) {
    if (c.subject) return c.subject;
    const n = c.members[0] && names.get(c.members[0]);
    return n || `Visitor ${(c.members[0] || c.id).slice(-6)}`;
  }

  /** @param {string} userId */
  async function loadName(userId) {
    if (names.has(userId)) return;
    names.set(userId, '');
    try {
      const u = await api('GET', `/users/${userId}`);
      names.set(userId, u.name || u.email || u.user_identifier || (u.is_anonymous ? `Visitor ${userId.slice(-6)}` : ''));
      renderList();
      if (userId && openId) renderHeader();
    } catch (_) {
      /* keep the fallback label */
    }
  }

  async function refreshList() {
    try {
      const page = await api('GET', '/conversations?limit=50');
      convs = /** @type {Conversation[]} */ (page.data || []);
      sortList();
      for (const c of convs) if (c.members[0]) loadName(c.members[0]);
      renderList();
      if (!openId && convs[0]) openConversation(convs[0].id);
    } catch (e) {
      setStatus(String(e instanceof Error ? e.message : e));
    }
  }

  function renderList() {
    listEl.textContent = '';
    if (!convs.length) {
      listEl.append(h('li', { class: 'none' }, ['No conversations yet. Open the visitor demo and say hello.']));
      return;
    }
    for (const c of convs) {
      const unread = !!c.last_message_id && c.id !== openId && (seenUpTo.get(c.id) || '') < c.last_message_id;
      const b = h(
        'button',
        {
          type: 'button',
          class: `conv${c.id === openId ? ' active' : ''}${unread ? ' unread' : ''}`,
          'data-lc': 'agent-conversation',
          'data-id': c.id,
          'aria-current': c.id === openId ? 'true' : 'false',
        },
        [
          h(
            'span',
            {
              class: `avatar${c.members.some((m) => online.has(m)) ? ' online' : ''}`,
              'data-lc': 'agent-avatar',
              'data-online': c.members.some((m) => online.has(m)) ? 'true' : 'false',
              'aria-hidden': 'true',
            },
            [label(c).charAt(0).toUpperCase()]
          ),
          h('span', { class: 'ct' }, [
            h('span', { class: 'cn' }, [label(c)]),
            h('span', { class: 'cs', 'data-lc': 'agent-conversation-meta' }, [
              `${c.status === 'closed' ? 'Closed · ' : ''}${c.assignee ? `${assigneeLabel(c.assignee)} · ` : ''}${time(c.updated_at)}`,
            ]),
          ]),
          h('span', { class: 'dot', 'aria-label': unread ? 'unread' : '' }),
        ]
      );
      b.addEventListener('click', () => openConversation(c.id));
      listEl.append(h('li', {}, [b]));
    }
  }

  /** @param {string} a an agent identifier */
  const assigneeLabel = (a) => (a === ACTOR.id ? 'Assigned to you' : `Assigned to ${a}`);

  function renderHeader() {
    const c = convs.find((x) => x.id === openId);
    titleEl.textContent = c ? label(c) : 'Conversation';
    subEl.textContent = c
      ? `${c.status === 'closed' ? 'Closed' : 'Open'} · ${c.assignee ? assigneeLabel(c.assignee) : 'Unassigned'} · ${c.id}`
      : openId;
    closeBtn.hidden = !c || c.status === 'closed';
    assignBtn.hidden = !c;
    assignBtn.textContent = c && c.assignee === ACTOR.id ? 'Unassign' : 'Assign to me';
  }

  // ------------------------------------------------------------------------------------------
  // Open conversation
  // ------------------------------------------------------------------------------------------

  /** @param {string} id */
  async function openConversation(id) {
    if (openId && openId !== id) sendFrame({ type: 'unsubscribe', id: ++reqSeq, conversation_id: openId });
    openId = id;
    lastRead = '';
    rows = [];
    pending.clear();
    logEl.textContent = '';
    typingEl.hidden = true;
    emptyEl.hidden = true;
    paneEl.hidden = false;
    renderHeader();
    renderList();
    try {
      const page = await api('GET', `/conversations/${id}/messages?limit=50`);
      if (openId !== id) return;
      for (const m of page.data || []) insert(m);
    } catch (e) {
      setStatus(String(e instanceof Error ? e.message : e));
    }
    subscribe();
    markRead();
    input.focus();
  }

  /** @param {Message} m */
  const isMine = (m) => m.sender.type === ACTOR.type && m.sender.id === ACTOR.id;

  /** @param {Row} r */
  function paintRow(r) {
    if (r.id) r.el.dataset.id = r.id;
    r.el.dataset.state = r.state;
  }

  /**
   * Inserts a stored message by id; drops duplicates; replaces the pending bubble of our own.
   * @param {Message} m
   */
  function insert(m) {
    if (rows.some((r) => r.id === m.id)) return false;
    const mine = isMine(m);
    const own = mine && m.client_msg_id ? rows.find((r) => !r.id && r.cmid === m.client_msg_id) : undefined;
    if (own) {
      own.id = m.id;
      own.m = m;
      own.state = 'sent';
      paintRow(own);
      rows.splice(rows.indexOf(own), 1);
    }
    const row = own || makeRow(m.text, mine, m.sender, m.created_at, m.id, m.client_msg_id || null, 'sent');
    row.m = m;
    let j = rows.length;
    while (j > 0 && (!rows[j - 1].id || /** @type {string} */ (rows[j - 1].id) > m.id)) j--;
    rows.splice(j, 0, row);
    const next = rows[j + 1];
    const stick = logEl.scrollHeight - logEl.scrollTop - logEl.clientHeight < 80;
    logEl.insertBefore(row.el, next ? next.el : null);
    if (stick || mine) logEl.scrollTop = logEl.scrollHeight;
    const prev = seenUpTo.get(m.conversation_id) || '';
    if (m.id > prev) seenUpTo.set(m.conversation_id, m.id);
    return true;
  }

  /**
   * @param {string} text
   * @param {boolean} mine
   * @param {Actor} sender
   * @param {string} at
   * @param {string | null} id
   * @param {string | null} cid
   * @param {string} state
   * @returns {Row}
   */
  function makeRow(text, mine, sender, at, id, cid, state) {
    const who = mine ? 'You' : sender.name || (sender.type === 'end_user' ? 'Visitor' : sender.id);
    const el = h('div', { class: `msg ${mine ? 'mine' : 'theirs'}`, 'data-lc': 'agent-message', 'data-mine': String(mine) }, [
      h('div', { class: 'who' }, [`${who} · ${time(at)}`]),
      h('div', { class: 'bubble' }, [text]),
    ]);
    const r = { key: id || cid || '', id, cmid: cid, m: null, text, state, el };
    paintRow(r);
    return r;
  }

  function newestRow() {
    for (let i = rows.length - 1; i >= 0; i--) if (rows[i].id) return rows[i];
    return undefined;
  }

  function markRead() {
    if (!openId || !authed || D.visibilityState === 'hidden') return;
    const last = newestRow();
    if (!last || !last.id || last.id <= lastRead) return;
    if (!rows.some((r) => r.id && r.m && !isMine(r.m) && r.id > lastRead)) return;
    if (sendFrame({ type: 'read', id: ++reqSeq, conversation_id: openId, message_id: last.id })) lastRead = last.id;
  }

  function send() {
    const text = input.value.trim();
    if (!text || !openId) return;
    input.value = '';
    stopTyping();
    const id = cmid();
    const row = makeRow(text, true, ACTOR, new Date().toISOString(), null, id, 'sending');
    rows.push(row);
    logEl.append(row.el);
    logEl.scrollTop = logEl.scrollHeight;
    transmit(row);
  }

  /** @param {Row} row */
  function transmit(row) {
    const id = ++reqSeq;
    if (sendFrame({ type: 'send', id, conversation_id: openId, client_msg_id: row.cmid, text: row.text })) pending.set(id, row);
  }

  function onTyping() {
    if (!openId || !authed) return;
    const now = Date.now();
    if (now - typingAt >= 3000) {
      typingAt = now;
      sendFrame({ type: 'typing', conversation_id: openId, state: 'start' });
    }
    clearTimeout(typingIdle);
    typingIdle = window.setTimeout(stopTyping, 5000);
  }

  function stopTyping() {
    clearTimeout(typingIdle);
    if (typingAt && openId) sendFrame({ type: 'typing', conversation_id: openId, state: 'stop' });
    typingAt = 0;
  }

  // ------------------------------------------------------------------------------------------
  // Realtime
  // ------------------------------------------------------------------------------------------

  /** @param {Record<string, unknown>} f */
  function sendFrame(f) {
    if (!ws || ws.readyState !== WebSocket.OPEN || (!authed && f.type !== 'auth')) return false;
    ws.send(JSON.stringify(f));
    return true;
  }

  /**
   * The contiguous resume cursor (docs/protocol.md §7): the newest message below which every
   * `seq` since the first one shown is held. Resuming after it misses nothing, even a message
   * that arrived out of order; resuming after the newest one could.
   */
  function cursorId() {
    /** @type {Row | undefined} */
    let cur;
    for (const r of rows) {
      if (!r.id || !r.m) continue;
      const seq = Number(r.m.seq);
      if (!cur || !cur.m) cur = r;
      else if (seq === Number(cur.m.seq) + 1) cur = r;
      else if (seq > Number(cur.m.seq) + 1) break;
    }
    // Nothing shown yet: from the conversation's start.
    return cur && cur.id ? cur.id : '00000000-0000-0000-0000-000000000000';
  }

  function subscribe() {
    if (!openId || !authed) return;
    sendFrame({ type: 'subscribe', id: ++reqSeq, conversation_id: openId, after: cursorId() });
  }

  async function connect() {
    if (!token) {
      try {
        await freshToken();
      } catch (e) {
        setStatus(String(e instanceof Error ? e.message : e));
        window.setTimeout(connect, 5000);
        return;
      }
    }
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/realtime/v1`;
    const sock = new WebSocket(url, 'larachat.v1.json');
    ws = sock;
    authed = false;
    setStatus('Connecting…');
    sock.onopen = () => sock.send(JSON.stringify({ type: 'auth', id: ++reqSeq, token }));
    sock.onmessage = (ev) => {
      if (ws !== sock) return;
      let f;
      try {
        f = JSON.parse(String(ev.data));
      } catch (_) {
        return;
      }
      onFrame(f);
    };
    sock.onclose = (ev) => {
      if (ws !== sock) return;
      ws = null;
      authed = false;
      for (const row of pending.values()) if (row.state === 'sending') row.el.dataset.state = 'sending';
      pending.clear();
      if (ev.code === 4001) {
        // The token expired (or its key was revoked): get a new one and connect again.
        token = '';
        setStatus('Renewing the agent token…');
        window.setTimeout(connect, 500);
        return;
      }
      if (ev.code >= 4000 && ev.code < 4100) {
        setStatus(`Disconnected (${ev.code} ${ev.reason || ''}).`);
        return;
      }
      const delay = Math.random() * Math.min(30000, 500 * 2 ** Math.min(attempt++, 16));
      setStatus('Reconnecting…');
      window.setTimeout(connect, delay);
    };
  }

  /** @param {any} f */
  function onFrame(f) {
    switch (f.type) {
      case 'auth_ok':
        authed = true;
        attempt = 0;
        setStatus(`Connected as ${ACTOR.name}`);
        // The inbox feed replaces polling; after every (re)connect, catch up once through the
        // API (feed events are live only, docs/protocol.md §3.4) and ask who is online.
        sendFrame({ type: 'watch', id: ++reqSeq, feed: 'inbox' });
        sendFrame({ type: 'who_is_online', id: ++reqSeq });
        refreshList();
        subscribe();
        for (const r of rows) if (!r.id) transmit(r);
        markRead();
        break;
      case 'message':
        if (f.conversation_id === openId && insert(f.message)) {
          if (!isMine(f.message)) {
            typingEl.hidden = true;
            markRead();
          }
        }
        break;
      case 'ack': {
        const row = pending.get(f.id);
        pending.delete(f.id);
        if (f.message && f.message.conversation_id === openId) insert(f.message);
        else if (row) row.el.remove();
        break;
      }
      case 'error': {
        const row = pending.get(f.id);
        if (row) {
          pending.delete(f.id);
          row.state = 'failed';
          paintRow(row);
        }
        setStatus(`Error: ${f.code} — ${f.message}`);
        break;
      }
      case 'typing':
        if (f.conversation_id === openId && f.actor && f.actor.type === 'end_user') {
          clearTimeout(visitorTyping);
          typingEl.hidden = f.state !== 'start';
          if (f.state === 'start') visitorTyping = window.setTimeout(() => (typingEl.hidden = true), 6000);
        }
        break;
      case 'conversation_created':
      case 'conversation_updated':
      case 'conversation':
        upsert(f.conversation);
        break;
      case 'message_preview': {
        const c = convs.find((x) => x.id === f.conversation_id);
        if (!c) {
          // Started before this page knew of it (e.g. a lost event): fetch the list once.
          refreshSoon();
          break;
        }
        c.last_message_id = f.message_id;
        c.updated_at = f.created_at;
        sortList();
        renderList();
        break;
      }
      case 'presence':
        if (f.status === 'online') online.add(f.user_id);
        else online.delete(f.user_id);
        renderList();
        break;
      case 'online':
        online.clear();
        for (const u of f.users || []) online.add(u.user_id);
        renderList();
        break;
      default:
    }
  }

  /**
   * A conversation from the feed: added or replaced, the list re-sorted.
   * @param {Conversation} c
   */
  function upsert(c) {
    if (!c || !c.id) return;
    const i = convs.findIndex((x) => x.id === c.id);
    if (i >= 0) convs[i] = c;
    else convs.unshift(c);
    if (c.members[0]) loadName(c.members[0]);
    sortList();
    renderList();
    if (c.id === openId) renderHeader();
    if (!openId) openConversation(c.id);
  }

  function sortList() {
    convs.sort((a, b) => (b.last_message_id || b.id).localeCompare(a.last_message_id || a.id));
  }

  /** @type {number | undefined} */
  let soon;
  function refreshSoon() {
    clearTimeout(soon);
    soon = window.setTimeout(refreshList, 300);
  }

  // ------------------------------------------------------------------------------------------
  // Wiring
  // ------------------------------------------------------------------------------------------

  sendBtn.addEventListener('click', send);
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  input.addEventListener('input', onTyping);
  input.addEventListener('blur', stopTyping);
  closeBtn.addEventListener('click', async () => {
    if (!openId) return;
    try {
      await api('DELETE', `/conversations/${openId}`);
    } catch (e) {
      setStatus(String(e instanceof Error ? e.message : e));
    }
    refreshList().then(renderHeader);
  });
  assignBtn.addEventListener('click', async () => {
    const c = convs.find((x) => x.id === openId);
    if (!c) return;
    try {
      // The change also comes back on the inbox feed; applying the reply shows it at once.
      upsert(await api('PATCH', `/conversations/${c.id}`, { assignee: c.assignee === ACTOR.id ? null : ACTOR.id }));
    } catch (e) {
      setStatus(String(e instanceof Error ? e.message : e));
    }
  });
  D.addEventListener('visibilitychange', markRead);

  if (!tokenUrl) {
    setStatus('No token URL configured: the server did not fill in window.LaraChatDemo.');
    return;
  }
  connect();
})();
