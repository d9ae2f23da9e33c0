// The only module that talks HTTP: parley's public API under /api/v1/ai, same origin.
//
// Every failure becomes an ApiError carrying the envelope's `code` and `error` message, so the
// page can always show a readable banner with its code instead of stopping silently.

const BASE = '/api/v1/ai';

export class ApiError extends Error {
  /**
   * @param {number} status HTTP status (0 when the server could not be reached, or the page itself
   *   refused the request before sending it)
   * @param {string} code machine-readable code from the error envelope
   * @param {string} message human-readable message from the error envelope
   * @param {number|null} retryAfter seconds to wait, from a Retry-After header
   * @param {object} details other fields of the envelope (e.g. `resetsAt` of a 402)
   */
  constructor(status, code, message, retryAfter = null, details = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    this.details = details;
  }
}

/** Seconds from a Retry-After header (delta-seconds or an HTTP date), or null. */
export function parseRetryAfter(value, now = Date.now()) {
  if (!value) return null;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed);
  const at = Date.parse(trimmed);
  if (Number.isNaN(at)) return null;
  return Math.max(0, Math.ceil((at - now) / 1000));
}

async function errorFrom(response) {
  let code = `http_${response.status}`;
  let message = response.statusText || 'The request failed.';
  let details = {};
  try {
    const body = await response.json();
    if (body && typeof body === 'object') {
      const { error, code: bodyCode, ...rest } = body;
      if (typeof bodyCode === 'string') code = bodyCode;
      if (typeof error === 'string') message = error;
      details = rest;
    }
  } catch {
    // Not the JSON envelope (a proxy's error page, say): keep the status line.
  }
  return new ApiError(response.status, code, message, parseRetryAfter(response.headers.get('Retry-After')), details);
}

function isStream(response) {
  return (response.headers.get('Content-Type') || '').startsWith('text/event-stream');
}

function unexpected(response, message) {
  response.body?.cancel().catch(() => {});
  return new ApiError(response.status, 'unexpected_response', message);
}

export class Api {
  /** @param {string} token bearer token; it goes in a header only, never in a URL */
  constructor(token) {
    this.token = token;
  }

  async #fetch(method, path, { body, headers = {}, signal } = {}) {
    const init = {
      method,
      headers: { Authorization: `Bearer ${this.token}`, ...headers },
      signal,
      cache: 'no-store', // replies and usage change all the time; never answer from a cache
      credentials: 'omit', // bearer auth only: no cookies, so no CSRF surface
      redirect: 'error', // a redirect would be a misconfigured proxy; do not follow with the token
    };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers['Content-Type'] = 'application/json';
    }
    let response;
    try {
      response = await fetch(BASE + path, init);
    } catch (err) {
      if (err && err.name === 'AbortError') throw err;
      throw new ApiError(0, 'network_error', 'Could not reach the server. Check the connection and try again.');
    }
    if (!response.ok) throw await errorFrom(response);
    return response;
  }

  async #json(method, path, body) {
    const response = await this.#fetch(method, path, { body, headers: { Accept: 'application/json' } });
    return response.json();
  }

  /**
   * Open an SSE response (a turn, or a re-attach); resolves once the headers arrived.
   * @returns {Promise<Response>}
   */
  async stream(method, path, { body, lastEventId, signal } = {}) {
    const headers = { Accept: 'text/event-stream' };
    if (lastEventId) headers['Last-Event-ID'] = lastEventId;
    const response = await this.#fetch(method, path, { body, headers, signal });
    if (!isStream(response)) throw unexpected(response, 'The server did not answer with a stream.');
    return response;
  }

  /**
   * A decision on tool calls or a plan. The answer is JSON while other calls of the reply still
   * wait, or the continuation's SSE stream when this decision settled the last of them.
   * @returns {Promise<{stream: Response}|{result: object}>}
   */
  async #decision(path, body, signal) {
    const headers = { Accept: 'text/event-stream, application/json' };
    const response = await this.#fetch('POST', path, { body, headers, signal });
    if (isStream(response)) return { stream: response };
    try {
      return { result: await response.json() };
    } catch {
      throw unexpected(response, 'The server answered the decision with something other than JSON or a stream.');
    }
  }

  usage() {
    return this.#json('GET', '/usage');
  }

  listSessions(page = 1, limit = 30) {
    return this.#json('GET', `/sessions?page=${page}&limit=${limit}`);
  }

  searchSessions(query) {
    return this.#json('GET', `/sessions/search?q=${encodeURIComponent(query)}&limit=30`);
  }

  createSession(title) {
    return this.#json('POST', '/sessions', title ? { title } : {});
  }

  getSession(id) {
    return this.#json('GET', `/sessions/${encodeURIComponent(id)}`);
  }

  renameSession(id, title) {
    return this.#json('PATCH', `/sessions/${encodeURIComponent(id)}`, { title });
  }

  closeSession(id) {
    return this.#json('DELETE', `/sessions/${encodeURIComponent(id)}`);
  }

  /** @param {{name: string}|null} toolChoice a tool the model must call now, or null to let it choose */
  sendMessage(id, content, signal, toolChoice = null) {
    const body = toolChoice ? { content, toolChoice } : { content };
    return this.stream('POST', `/sessions/${encodeURIComponent(id)}/messages`, { body, signal });
  }

  listTools(id) {
    return this.#json('GET', `/sessions/${encodeURIComponent(id)}/tools`);
  }

  toolExecutions(id) {
    return this.#json('GET', `/sessions/${encodeURIComponent(id)}/tool-executions`);
  }

  /** @param {{approved: boolean, reason?: string, always?: boolean}} decision */
  decide(id, executionId, decision, signal) {
    const path = `/sessions/${encodeURIComponent(id)}/approve/${encodeURIComponent(executionId)}`;
    return this.#decision(path, decision, signal);
  }

  /** Several calls at once, all or none: `[{executionId, approved, reason?, always?}]`. */
  decideMany(id, decisions, signal) {
    return this.#decision(`/sessions/${encodeURIComponent(id)}/tool-decisions`, { decisions }, signal);
  }

  decidePlan(id, approved, signal) {
    return this.#decision(`/sessions/${encodeURIComponent(id)}/approve-plan`, { approved }, signal);
  }

  attach(id, lastEventId, signal) {
    return this.stream('GET', `/sessions/${encodeURIComponent(id)}/events`, { lastEventId, signal });
  }

  interrupt(id) {
    return this.#json('POST', `/sessions/${encodeURIComponent(id)}/interrupt`);
  }

  // The review page's calls (an admin token).

  /** The sessions of the token's organizations, newest activity first; `flagged`: only those. */
  adminSessions({ flagged, limit }) {
    return this.#json('GET', `/admin/sessions?${flagged ? 'flagged=true&' : ''}limit=${limit}`);
  }

  /** A session's transcript and tool calls, as the review page shows them. */
  adminSession(id) {
    return this.#json('GET', `/admin/sessions/${encodeURIComponent(id)}`);
  }

  unflagSession(id) {
    return this.#json('DELETE', `/sessions/${encodeURIComponent(id)}/flag`);
  }
}
