// Client of the room WebSocket API (/ws/{room}, docs/room-api.md), used by room.html.
//
// One socket per participant carries JSON both ways: requests, each answered
// once with its `id` echoed, and room events. Media still goes over WebRTC:
// `publish` and `subscribe` carry an SDP offer and return the answer.

import { ICE_GATHERING_TIMEOUT_MS, SessionError, waitForIceGathering } from '/static/whip.js';

const REQUEST_TIMEOUT_MS = 15000;

export class RoomSocket {
  /**
   * onEvent(message): every message that is not the reply to a request (room events,
   *   and errors the server could not tie to a request).
   * onClose(event): the socket closed; pending requests were rejected.
   */
  constructor(room, { onEvent = () => {}, onClose = () => {} } = {}) {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    this.url = `${scheme}://${location.host}/ws/${encodeURIComponent(room)}`;
    this.onEvent = onEvent;
    this.onClose = onClose;
    this.ws = null;
    this._ids = 0;
    this._waiting = new Map(); // id -> {resolve, reject, timer, type}
  }

  get open() {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  /** Open the socket and join the room; resolves with the `joined` reply. */
  async join(name, token) {
    const ws = new WebSocket(this.url);
    this.ws = ws;
    await new Promise((resolve, reject) => {
      ws.addEventListener('open', resolve, { once: true });
      ws.addEventListener('close', () => reject(new SessionError(`could not connect to ${new URL(this.url).pathname}`)),
        { once: true });
    });
    ws.addEventListener('message', (event) => this._receive(event.data));
    ws.addEventListener('close', (event) => this._closed(event));
    return this.request({ type: 'join', name, ...(token ? { token } : {}) });
  }

  /** Send a request; resolves with its reply, rejects with a SessionError (status, reason) on an `error`. */
  request(message, timeoutMs = REQUEST_TIMEOUT_MS) {
    if (!this.open) return Promise.reject(new SessionError(`${message.type}: not connected to the room`));
    const id = ++this._ids;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._waiting.delete(id);
        reject(new SessionError(`${message.type}: no answer within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      this._waiting.set(id, { resolve, reject, timer, type: message.type });
      this.ws.send(JSON.stringify({ ...message, id }));
    });
  }

  /** Say goodbye (the server ends our sessions) and close. */
  async leave() {
    if (this.open) await this.request({ type: 'leave' }, 2000).catch(() => {});
    this.ws?.close();
  }

  _receive(raw) {
    let message;
    try {
      message = JSON.parse(raw);
    } catch {
      return;
    }
    const waiting = message.id === undefined ? undefined : this._waiting.get(message.id);
    if (!waiting) {
      this.onEvent(message);
      return;
    }
    this._waiting.delete(message.id);
    clearTimeout(waiting.timer);
    if (message.type === 'error') {
      waiting.reject(new SessionError(`${waiting.type} failed: ${message.status} — ${message.reason}`, {
        status: message.status, reason: message.reason,
      }));
    } else {
      waiting.resolve(message);
    }
  }

  _closed(event) {
    for (const waiting of this._waiting.values()) {
      clearTimeout(waiting.timer);
      waiting.reject(new SessionError(`${waiting.type}: the room connection closed`));
    }
    this._waiting.clear();
    this.onClose(event);
  }
}

/** Make an offer and let ICE gather briefly (the server is ICE-lite: no trickling). */
export async function gatheredOffer(pc) {
  await pc.setLocalDescription(await pc.createOffer());
  await waitForIceGathering(pc, ICE_GATHERING_TIMEOUT_MS);
  return pc.localDescription.sdp;
}

/** Video frames one receiver decoded so far. */
export async function framesDecoded(receiver) {
  let frames = 0;
  (await receiver.getStats()).forEach((stat) => {
    if (stat.type === 'inbound-rtp') frames += stat.framesDecoded ?? 0;
  });
  return frames;
}
