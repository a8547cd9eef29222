// The Admin API client and the login session. The admin JWT lives in sessionStorage only (gone
// with the tab); no secret key is ever stored by the dashboard.
import { reactive } from 'vue';

const KEY = 'larachat.dashboard.session';

function load() {
  try {
    const s = JSON.parse(sessionStorage.getItem(KEY) || 'null');
    if (s && s.token && Date.parse(s.expires_at) > Date.now()) return s;
  } catch (_) {
    /* a damaged entry is no session */
  }
  sessionStorage.removeItem(KEY);
  return null;
}

const saved = load();
export const session = reactive({
  token: saved ? saved.token : '',
  expiresAt: saved ? saved.expires_at : '',
  user: saved ? saved.user : null,
  /** Why the last session ended (shown on the login page). */
  reason: '',
});

let expiryTimer;
function armExpiry() {
  clearTimeout(expiryTimer);
  if (!session.token) return;
  const left = Date.parse(session.expiresAt) - Date.now();
  // setTimeout overflows past ~24.8 days; tokens are short-lived anyway.
  expiryTimer = setTimeout(() => logout('Your session expired. Please sign in again.'), Math.min(Math.max(left, 0), 2 ** 31 - 1));
}
armExpiry();

/** Stores a login (or invite acceptance) answer. */
export function startSession(answer) {
  session.token = answer.token;
  session.expiresAt = answer.expires_at;
  session.user = answer.user;
  session.reason = '';
  sessionStorage.setItem(KEY, JSON.stringify({ token: answer.token, expires_at: answer.expires_at, user: answer.user }));
  armExpiry();
}

export function logout(reason = '') {
  clearTimeout(expiryTimer);
  session.token = '';
  session.expiresAt = '';
  session.user = null;
  session.reason = reason;
  sessionStorage.removeItem(KEY);
  if (location.hash !== '#/login') location.hash = '#/login';
}

/** An API error with the server's code and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

/**
 * Calls the Admin API (same origin). A 401 on an authenticated call ends the session.
 * Resolves to the parsed JSON body (or null for 204).
 */
export async function api(method, path, body, { auth = true } = {}) {
  const headers = {};
  if (auth && session.token) headers.authorization = `Bearer ${session.token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) {
    const err = data && data.error ? data.error : {};
    if (res.status === 401 && auth && session.token) logout('Your session expired. Please sign in again.');
    throw new ApiError(res.status, err.code || 'http_error', err.message || `HTTP ${res.status}`);
  }
  return data;
}

/** A message for the UI from any thrown value. */
export function describe(e) {
  if (e instanceof ApiError) return e.status === 403 ? `Not allowed: ${e.message}` : e.message;
  return e && e.message ? e.message : String(e);
}
