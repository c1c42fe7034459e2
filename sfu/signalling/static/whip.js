// WHIP / WHEP client shared by publish.html and watch.html.
//
// One session is one RTCPeerConnection plus one HTTP resource on the server.
// The server is ICE-lite and puts its host candidate in the answer, so the
// client never trickles: it gathers briefly, POSTs the offer once, applies the
// answer, and DELETEs the resource when it stops. No STUN or TURN server is
// ever configured.
//
// Where the server offers them (a `Link` with rel EVENTS_REL on the 201), a
// session's server-sent events tell the client mid-session what it must do:
// `reconnect` (POST a fresh offer to the given URL, then DELETE the old
// session: make-before-break), `active` / `inactive` (the room got / lost its
// publisher). See SessionClient.follow.

export const ICE_GATHERING_TIMEOUT_MS = 1000;
export const RETRY_AFTER_DEFAULT_S = 1;
const RETRY_AFTER_MIN_S = 0.25;
const RETRY_AFTER_MAX_S = 30;
const REASON_MAX_CHARS = 500;
const DELETE_TIMEOUT_MS = 2000;
const EVENTS_TIMEOUT_MS = 5000;

/** The WHEP draft's server-sent events extension (we offer it on WHIP sessions too). */
export const EVENTS_REL = 'urn:ietf:params:whep:ext:core:server-sent-events';

/** A failure a person can read: what was tried, what the server said. */
export class SessionError extends Error {
  constructor(message, { status = 0, reason = '' } = {}) {
    super(message);
    this.name = 'SessionError';
    this.status = status;
    this.reason = reason;
  }
}

export function isAbort(err) {
  return err?.name === 'AbortError';
}

/** An RTCPeerConnection that can never reach a STUN or TURN server. */
export function newPeerConnection() {
  return new RTCPeerConnection({ iceServers: [], bundlePolicy: 'max-bundle' });
}

/**
 * Client for one WHIP (publish) or WHEP (watch) resource.
 *
 * endpoint: URL of the POST endpoint, e.g. `/whip/<room>`.
 * token: bearer token, sent when not empty.
 * retryWhenNotPublished: on `409` wait for `Retry-After` and POST again
 *   (WHEP before anyone publishes); otherwise a 409 is an error.
 * listener: object with optional named methods onPosting(attempt),
 *   onRetry(delaySeconds, reason, attempt) and onResource(url, etag).
 *
 * After start(), `eventsUrl` and `eventsOffered` say whether the server offers
 * session events (null and [] when it does not); follow() listens to them.
 */
export class SessionClient {
  constructor(endpoint, { token = '', retryWhenNotPublished = false, listener = {} } = {}) {
    this.endpoint = new URL(endpoint, location.href).href;
    this.token = token;
    this.retryWhenNotPublished = retryWhenNotPublished;
    this.listener = listener;
    this.resourceUrl = null;
    this.etag = null;
    this.eventsUrl = null;
    this.eventsOffered = [];
    this.events = null;
    this._abort = null;
  }

  /** Offer, POST, apply the answer. Throws SessionError, or AbortError after stop(). */
  async start(pc) {
    if (this._abort) throw new Error('session already started');
    const abort = new AbortController();
    this._abort = abort;
    const signal = abort.signal;

    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc, ICE_GATHERING_TIMEOUT_MS, signal);
    const offerSdp = pc.localDescription.sdp;

    for (let attempt = 1; ; attempt++) {
      this.listener.onPosting?.(attempt);
      const response = await this._post(offerSdp, signal);
      if (response.status === 201 || response.status === 200) {
        await this._accept(pc, response, signal);
        return;
      }
      const reason = await readReason(response);
      if (response.status === 409 && this.retryWhenNotPublished) {
        const delayS = parseRetryAfter(response.headers.get('Retry-After'));
        this.listener.onRetry?.(delayS, reason, attempt);
        await sleep(delayS * 1000, signal);
        continue;
      }
      throw new SessionError(describeFailure('POST', this.endpoint, response, reason), {
        status: response.status,
        reason,
      });
    }
  }

  /**
   * Cancel a pending start and DELETE the server resource, if any.
   * Call it before closing the peer connection: the server ends a session whose
   * DTLS closes, and a DELETE that arrives after that only finds a 404.
   */
  async stop() {
    this._abort?.abort();
    this._abort = null;
    this.events?.close();
    this.events = null;
    const url = this.resourceUrl;
    this.resourceUrl = null;
    this.etag = null;
    if (!url) return;
    let response;
    try {
      response = await fetch(url, {
        method: 'DELETE',
        headers: this._headers(),
        keepalive: true,
        signal: AbortSignal.timeout(DELETE_TIMEOUT_MS),
      });
    } catch (err) {
      throw new SessionError(`DELETE ${new URL(url).pathname} failed: no answer from the server (${err.message})`);
    }
    // 404: the server already forgot it (expired or restarted); nothing left to end.
    if (!response.ok && response.status !== 404) {
      const reason = await readReason(response);
      throw new SessionError(describeFailure('DELETE', url, response, reason), {
        status: response.status,
        reason,
      });
    }
    // Read to the end: a body left open is aborted when the timeout fires.
    await response.text().catch(() => '');
  }

  /** Best effort DELETE while the page goes away; nothing to await. */
  stopOnUnload() {
    this.events?.close();
    this.events = null;
    if (!this.resourceUrl) return;
    fetch(this.resourceUrl, { method: 'DELETE', headers: this._headers(), keepalive: true }).catch(() => {});
    this.resourceUrl = null;
  }

  async _post(offerSdp, signal) {
    const headers = this._headers();
    headers['Content-Type'] = 'application/sdp';
    headers['Accept'] = 'application/sdp';
    try {
      return await fetch(this.endpoint, { method: 'POST', headers, body: offerSdp, signal });
    } catch (err) {
      if (isAbort(err)) throw err;
      throw new SessionError(`POST ${this.endpoint} failed: could not reach the server (${err.message})`);
    }
  }

  async _accept(pc, response, signal) {
    const location_ = response.headers.get('Location');
    this.resourceUrl = location_ ? new URL(location_, this.endpoint).href : null;
    this.etag = response.headers.get('ETag');
    const link = parseEventsLink(response.headers.get('Link'), this.endpoint);
    this.eventsUrl = link?.url ?? null;
    this.eventsOffered = link?.events ?? [];
    const answerSdp = await response.text();
    this.listener.onResource?.(this.resourceUrl, this.etag);
    if (signal.aborted) throw new DOMException('stopped', 'AbortError');
    if (!answerSdp.startsWith('v=0')) {
      await this.stop().catch(() => {});
      throw new SessionError(`POST ${this.endpoint}: server answered ${response.status} without an SDP answer`);
    }
    try {
      await pc.setRemoteDescription({ type: 'answer', sdp: answerSdp });
    } catch (err) {
      await this.stop().catch(() => {});
      throw new SessionError(`the browser rejected the server's SDP answer: ${err.message}`);
    }
  }

  /**
   * Listen to the session's server-sent events: POST the names wanted (those the
   * server offers) to `eventsUrl`, then read the stream it names with an EventSource.
   *
   * handlers: {reconnect(data), active(data), inactive(data), onClosed()}, each
   * optional; an event calls the handler of its name with its parsed JSON data.
   * onClosed() runs once when the stream ends without close() being called (the
   * session ended on the server, or the connection broke): no more events come.
   *
   * Returns the SessionEvents (also kept as `this.events`, closed by stop()), or
   * null when the server offers none of the events wanted. Throws SessionError
   * when the subscription is refused.
   */
  async follow(names, handlers = {}) {
    if (!this.eventsUrl || !this.resourceUrl) return null;
    const wanted = names.filter((name) => this.eventsOffered.includes(name));
    if (!wanted.length) return null;
    const headers = this._headers();
    headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await fetch(this.eventsUrl, {
        method: 'POST', headers, body: JSON.stringify(wanted), signal: AbortSignal.timeout(EVENTS_TIMEOUT_MS),
      });
    } catch (err) {
      throw new SessionError(`POST ${new URL(this.eventsUrl).pathname} failed: no answer from the server (${err.message})`);
    }
    const streamLocation = response.headers.get('Location');
    if (response.status !== 201 || !streamLocation) {
      const reason = await readReason(response);
      throw new SessionError(describeFailure('POST', this.eventsUrl, response, reason), {
        status: response.status,
        reason,
      });
    }
    await response.text().catch(() => ''); // to the end: the timeout would abort it
    if (!this.resourceUrl) return null; // stopped meanwhile
    this.events?.close();
    this.events = new SessionEvents(new URL(streamLocation, this.eventsUrl).href, wanted, handlers);
    return this.events;
  }

  _headers() {
    return this.token ? { Authorization: `Bearer ${this.token}` } : {};
  }
}

/**
 * One event stream of a session (an EventSource on the URL the subscription named).
 * It is not reopened when it breaks: the server ends it with its session, and a
 * client that lost it falls back to what it does without events.
 */
export class SessionEvents {
  constructor(url, names, handlers) {
    this.url = url;
    this.live = true;
    this._handlers = handlers;
    this._source = new EventSource(url);
    for (const name of names) {
      this._source.addEventListener(name, (event) => this._dispatch(name, event.data));
    }
    this._source.addEventListener('error', () => this._ended());
  }

  close() {
    this.live = false;
    this._source.close();
  }

  _dispatch(name, raw) {
    if (!this.live) return;
    let data = {};
    try {
      data = raw ? JSON.parse(raw) : {};
    } catch {
      data = { raw };
    }
    this._handlers[name]?.(data);
  }

  _ended() {
    if (!this.live) return;
    this.close();
    this._handlers.onClosed?.();
  }
}

/**
 * The `Link` header's events link: {url, events} with url resolved against base,
 * or null when there is none. Links are split on commas outside <> and quotes
 * (the events parameter is itself a comma-separated list in quotes).
 */
export function parseEventsLink(header, base) {
  if (!header) return null;
  for (const link of splitOutside(header, ',')) {
    const match = /^\s*<([^>]*)>(.*)$/s.exec(link);
    if (!match) continue;
    const params = {};
    for (const part of splitOutside(match[2], ';')) {
      const eq = part.indexOf('=');
      if (eq < 0) continue;
      const key = part.slice(0, eq).trim().toLowerCase();
      let value = part.slice(eq + 1).trim();
      if (value.startsWith('"') && value.endsWith('"') && value.length >= 2) value = value.slice(1, -1);
      params[key] = value;
    }
    if (!(params.rel ?? '').split(/\s+/).includes(EVENTS_REL)) continue;
    const events = (params.events ?? '').split(',').map((name) => name.trim()).filter(Boolean);
    try {
      return { url: new URL(match[1], base).href, events };
    } catch {
      return null;
    }
  }
  return null;
}

function splitOutside(text, separator) {
  const parts = [];
  let current = '';
  let quoted = false;
  let bracketed = false;
  for (const ch of text) {
    if (ch === '"' && !bracketed) quoted = !quoted;
    else if (ch === '<' && !quoted) bracketed = true;
    else if (ch === '>' && !quoted) bracketed = false;
    if (ch === separator && !quoted && !bracketed) {
      parts.push(current);
      current = '';
    } else {
      current += ch;
    }
  }
  parts.push(current);
  return parts;
}

/**
 * Where a `reconnect` event sends a client: its `url` resolved against the endpoint
 * it used, keeping that endpoint's query parameters (?layer=, max_width=, ...) the
 * event's url does not set itself. No url: the endpoint itself.
 */
export function reconnectEndpoint(endpoint, url) {
  const before = new URL(endpoint, location.href);
  if (!url) return before.href;
  const next = new URL(url, before);
  for (const [key, value] of before.searchParams) {
    if (!next.searchParams.has(key)) next.searchParams.append(key, value);
  }
  return next.href;
}

/** Resolve once ICE gathering completes, or after timeoutMs, whichever is first. */
export function waitForIceGathering(pc, timeoutMs, signal) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve, reject) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', onChange);
      signal?.removeEventListener('abort', onAbort);
    };
    const onChange = () => {
      if (pc.iceGatheringState === 'complete') {
        done();
        resolve();
      }
    };
    const onAbort = () => {
      done();
      reject(new DOMException('stopped', 'AbortError'));
    };
    const timer = setTimeout(() => {
      done();
      resolve();
    }, timeoutMs);
    pc.addEventListener('icegatheringstatechange', onChange);
    signal?.addEventListener('abort', onAbort);
  });
}

/** Retry-After as seconds (delta-seconds or HTTP date), clamped to a sane range. */
export function parseRetryAfter(value) {
  let seconds = RETRY_AFTER_DEFAULT_S;
  if (value) {
    const trimmed = value.trim();
    if (/^\d+(\.\d+)?$/.test(trimmed)) {
      seconds = Number(trimmed);
    } else {
      const at = Date.parse(trimmed);
      if (!Number.isNaN(at)) seconds = (at - Date.now()) / 1000;
    }
  }
  return Math.min(RETRY_AFTER_MAX_S, Math.max(RETRY_AFTER_MIN_S, seconds));
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(new DOMException('stopped', 'AbortError'));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    if (signal?.aborted) onAbort();
    else signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** The server's plain-text reason; HTML error pages from proxies are not shown. */
async function readReason(response) {
  if ((response.headers.get('Content-Type') ?? '').includes('html')) return '';
  try {
    const text = (await response.text()).trim();
    return text.length > REASON_MAX_CHARS ? `${text.slice(0, REASON_MAX_CHARS)}…` : text;
  } catch {
    return '';
  }
}

const STATUS_HINTS = {
  400: 'the server could not use the offer',
  401: 'a valid token is needed (add ?token=…)',
  403: 'the token does not allow this room',
  404: 'no such endpoint or resource',
  409: 'nothing is published in this room yet',
  415: 'the server wants Content-Type application/sdp',
  503: 'the server is overloaded or starting; try again shortly',
};

function describeFailure(method, url, response, reason) {
  const status = `${response.status}${response.statusText ? ` ${response.statusText}` : ''}`;
  const detail = reason || STATUS_HINTS[response.status] || '';
  return `${method} ${new URL(url).pathname} failed: ${status}${detail ? ` — ${detail}` : ''}`;
}

// ---------------------------------------------------------------- stats

/** Summary of what a viewer receives, from the inbound-rtp reports. */
export async function inboundSummary(pc) {
  const summary = {
    framesDecoded: 0,
    frameWidth: 0,
    frameHeight: 0,
    framesPerSecond: 0,
    videoBytesReceived: 0,
    videoPacketsReceived: 0,
    videoPacketsLost: 0,
    audioPacketsReceived: 0,
    audioBytesReceived: 0,
    audioCodec: '', // e.g. "audio/opus", or "audio/red" when redundancy (RFC 2198) arrives
    audioConcealedSamples: 0,
    audioSamplesReceived: 0,
    connectionState: pc ? pc.connectionState : 'new',
    iceConnectionState: pc ? pc.iceConnectionState : 'new',
  };
  if (!pc) return summary;
  const report = await pc.getStats();
  report.forEach((stat) => {
    if (stat.type !== 'inbound-rtp') return;
    if (stat.kind === 'video') {
      summary.framesDecoded += stat.framesDecoded ?? 0;
      summary.frameWidth = Math.max(summary.frameWidth, stat.frameWidth ?? 0);
      summary.frameHeight = Math.max(summary.frameHeight, stat.frameHeight ?? 0);
      summary.framesPerSecond = Math.max(summary.framesPerSecond, stat.framesPerSecond ?? 0);
      summary.videoBytesReceived += stat.bytesReceived ?? 0;
      summary.videoPacketsReceived += stat.packetsReceived ?? 0;
      summary.videoPacketsLost += stat.packetsLost ?? 0;
    } else if (stat.kind === 'audio') {
      summary.audioPacketsReceived += stat.packetsReceived ?? 0;
      summary.audioBytesReceived += stat.bytesReceived ?? 0;
      summary.audioCodec = report.get(stat.codecId)?.mimeType ?? summary.audioCodec;
      summary.audioConcealedSamples += stat.concealedSamples ?? 0;
      summary.audioSamplesReceived += stat.totalSamplesReceived ?? 0;
    }
  });
  return summary;
}

/** Summary of what a publisher sends, from the outbound-rtp reports. */
export async function outboundSummary(pc) {
  const summary = {
    framesEncoded: 0,
    framesSent: 0,
    frameWidth: 0,
    frameHeight: 0,
    framesPerSecond: 0,
    videoBytesSent: 0,
    audioPacketsSent: 0,
    audioBytesSent: 0,
    audioCodec: '', // "audio/red" when the answer asked for redundancy (co-performance rooms)
    connectionState: pc ? pc.connectionState : 'new',
    iceConnectionState: pc ? pc.iceConnectionState : 'new',
  };
  if (!pc) return summary;
  const report = await pc.getStats();
  report.forEach((stat) => {
    if (stat.type !== 'outbound-rtp') return;
    if (stat.kind === 'video') {
      summary.framesEncoded += stat.framesEncoded ?? 0;
      summary.framesSent += stat.framesSent ?? 0;
      summary.frameWidth = Math.max(summary.frameWidth, stat.frameWidth ?? 0);
      summary.frameHeight = Math.max(summary.frameHeight, stat.frameHeight ?? 0);
      summary.framesPerSecond = Math.max(summary.framesPerSecond, stat.framesPerSecond ?? 0);
      summary.videoBytesSent += stat.bytesSent ?? 0;
    } else if (stat.kind === 'audio') {
      summary.audioPacketsSent += stat.packetsSent ?? 0;
      summary.audioBytesSent += stat.bytesSent ?? 0;
      summary.audioCodec = report.get(stat.codecId)?.mimeType ?? summary.audioCodec;
    }
  });
  return summary;
}

/** Turns successive byte counters into a bit rate. */
export class RateMeter {
  constructor() {
    this._bytes = null;
    this._atMs = 0;
  }

  kbps(bytes) {
    const nowMs = performance.now();
    const previous = this._bytes;
    const elapsedMs = nowMs - this._atMs;
    this._bytes = bytes;
    this._atMs = nowMs;
    if (previous === null || elapsedMs <= 0 || bytes < previous) return 0;
    return ((bytes - previous) * 8) / elapsedMs;
  }
}

// ---------------------------------------------------------------- page helpers

/** room, token and autostart from the query string. */
export function pageParams() {
  const query = new URLSearchParams(location.search);
  return {
    room: query.get('room') ?? '',
    token: query.get('token') ?? '',
    autostart: query.get('autostart') === '1',
  };
}

/** Keep ?room= and ?token= in the address bar in step with the form. */
export function rememberParams(room, token) {
  const query = new URLSearchParams(location.search);
  query.set('room', room);
  if (token) query.set('token', token);
  else query.delete('token');
  history.replaceState(null, '', `${location.pathname}?${query}`);
}

/** Show a peer connection or ICE state in a coloured pill. */
export function showState(element, state) {
  element.textContent = state;
  element.dataset.state = state;
}

/** A short, newest-last activity log with timestamps. */
export class ActivityLog {
  constructor(list, maxLines = 30) {
    this.list = list;
    this.maxLines = maxLines;
  }

  info(text) {
    this._add(text, 'info');
  }

  error(text) {
    this._add(text, 'error');
    console.error(text);
  }

  _add(text, kind) {
    const item = document.createElement('li');
    item.className = kind;
    const time = document.createElement('time');
    time.textContent = new Date().toLocaleTimeString();
    item.append(time, ' ', text);
    this.list.append(item);
    while (this.list.children.length > this.maxLines) this.list.firstElementChild.remove();
    this.list.scrollTop = this.list.scrollHeight;
  }
}

/** Render an error for people: SessionError messages as they are, others with their type. */
export function describeError(err) {
  if (err instanceof SessionError) return err.message;
  if (err?.name === 'NotAllowedError') return 'camera or microphone permission was denied';
  if (err?.name === 'NotFoundError') return 'no camera or microphone was found';
  if (err?.name === 'NotReadableError') return 'the camera or microphone is in use by another program';
  return `${err?.name ?? 'Error'}: ${err?.message ?? err}`;
}
