// The page's calls to /api/v1: same origin, the session cookie, and the session's CSRF
// token on every change. Errors arrive as RFC 9457 problem documents.

let csrfToken = null;
export let me = null;

export class Problem extends Error {
  constructor(status, body) {
    const detail = body && typeof body.detail === 'string' ? body.detail : `HTTP ${status}`;
    super(detail);
    this.status = status;
    this.code = body && body.code || 'error';
    this.detail = detail;
    this.title = body && body.title || '';
  }
}

function signInAgain() {
  const next = location.pathname + location.search;
  location.assign('/login?next=' + encodeURIComponent(location.pathname === '/' ? '/' : next));
}

async function problemOf(response) {
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  return new Problem(response.status, body);
}

function url(path, query) {
  const target = new URL(path, location.origin);
  if (target.origin !== location.origin) throw new TypeError('the API is on this origin only');
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== '') target.searchParams.set(key, value);
  }
  return target.pathname + target.search;
}

/** fetch() for the API: JSON in and out; throws Problem for errors. */
export async function request(method, path, {json, query, form, accept, signal, raw} = {}) {
  const headers = {};
  let body;
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  if (accept) headers.Accept = accept;
  if (!['GET', 'HEAD'].includes(method) && csrfToken) headers['X-CSRF-Token'] = csrfToken;
  const response = await fetch(url(path, query), {
    method, headers, body, signal, credentials: 'same-origin', redirect: 'error',
    cache: 'no-store',
  });
  if (response.status === 401) {
    signInAgain();
    throw new Problem(401, {detail: 'Signed out; sign in again.', code: 'unauthorized'});
  }
  if (!response.ok) throw await problemOf(response);
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

export const get = (path, query, options) => request('GET', path, {query, ...options});
export const post = (path, json, options) => request('POST', path, {json, ...options});
export const patch = (path, json) => request('PATCH', path, {json});
export const del = (path) => request('DELETE', path);

export async function loadSession() {
  const session = await get('/api/v1/session');
  csrfToken = session.csrf_token;
  me = session.user;
  return session;
}

export async function signOut() {
  try { await del('/api/v1/session'); } finally { location.assign('/login'); }
}

/**
 * POST json to path and yield the server-sent events of the answer: {event, data}.
 * The body is read as a stream, so events show as they arrive.
 */
export async function* events(path, json, signal) {
  const response = await request('POST', path, {json, accept: 'text/event-stream', signal, raw: true});
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      let parsed = null;
      try { parsed = JSON.parse(data.join('\n')); } catch { parsed = {text: data.join('\n')}; }
      yield {event, data: parsed};
    }
  }
}

/** Download an API file to the user's disk through a blob URL (the cookie authorises it). */
export async function download(path, query, filename) {
  const response = await request('GET', path, {query, raw: true});
  const blob = await response.blob();
  const href = URL.createObjectURL(blob);
  const link = document.createElement('a');
  link.href = href;
  link.download = filename || 'download';
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(href), 10000);
}
