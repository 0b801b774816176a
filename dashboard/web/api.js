// api.js — the admin API as the dashboard calls it: same-origin fetch with
// the session cookie, the CSRF token on every action, and a 401 (session
// over) sending the page back to the log-in form.
let session = null;

export async function loadSession() {
  const r = await fetch('/dashboard/session', { credentials: 'same-origin', cache: 'no-store' });
  if (r.status === 401) {
    location.assign('/dashboard/login');
    throw new Error('not logged in');
  }
  session = await r.json();
  return session;
}

export function canAct() {
  return !!(session && session.can_act);
}

export function role() {
  return session ? session.role : 'none';
}

export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.field = e.field || null;
  }
}

async function call(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') {
    headers['X-CSRF-Token'] = session ? session.csrf : '';
    if (body !== undefined) headers['Content-Type'] = 'application/json';
  }
  const r = await fetch(path, {
    method,
    headers,
    credentials: 'same-origin',
    cache: 'no-store',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  const text = await r.text();
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (r.status === 401) {
    location.assign('/dashboard/login');
    throw new ApiError(401, data);
  }
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

export const get = (path) => call('GET', path);
export const post = (path, body) => call('POST', path, body);

export async function logout() {
  await fetch('/dashboard/logout', {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'X-CSRF-Token': session ? session.csrf : '' },
  });
  location.assign('/dashboard/login');
}
