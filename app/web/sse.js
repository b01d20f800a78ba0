// Atelier studio: Server-Sent Events read with fetch, so that the stream carries the API key
// in its Authorization header (EventSource cannot send headers, and a key must never go in
// a URL). One code path, with or without a key.
"use strict";

import { authHeaders, responseError } from "./lib.js";

const RETRY_MS = 1000; // the first reconnection delay, unless the server sends `retry:`
const MAX_RETRY_MS = 15_000;
const RETRY_STATUSES = new Set([502, 503, 504]); // a proxy or a restarting server: try again

/** The event stream format (WHATWG HTML, "Interpreting an event stream"): feed it text as
 *  it arrives, in pieces of any size; it returns the events completed, as {type, data, id}.
 *  Lines end with CRLF, LF or CR; `:` lines are comments (keep-alives); `data:` lines join
 *  with newlines; `id:` is remembered across events (and reconnections: `restart`). */
export class SseParser {
  constructor() {
    this.lastEventId = "";
    this.retry = null;
    this.restart();
  }

  /** A new connection: what was half received is dropped, the last event id kept. */
  restart() {
    this.buffer = "";
    this.afterCR = false;
    this.type = "";
    this.data = null;
    this.id = this.lastEventId;
  }

  feed(text) {
    const events = [];
    // A CR ending the last piece may be the first half of a CRLF: its LF is not a new line.
    if (this.afterCR && text.startsWith("\n")) {
      text = text.slice(1);
      this.afterCR = false;
    }
    if (text) this.afterCR = text.endsWith("\r");
    const buffer = this.buffer + text;
    const lineEnd = /\r\n|\r|\n/g;
    let start = 0;
    for (let match; (match = lineEnd.exec(buffer));) {
      this.line(buffer.slice(start, match.index), events);
      start = lineEnd.lastIndex;
    }
    this.buffer = buffer.slice(start);
    return events;
  }

  line(line, events) {
    if (line === "") { // the end of an event
      this.lastEventId = this.id;
      if (this.data !== null) events.push({ type: this.type || "message", data: this.data, id: this.lastEventId });
      this.type = "";
      this.data = null;
      return;
    }
    if (line.startsWith(":")) return; // a comment: the server's keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.type = value;
    else if (field === "data") this.data = this.data === null ? value : `${this.data}\n${value}`;
    else if (field === "id" && !value.includes("\0")) this.id = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
  }
}

/** Follow the event stream at `path` (with the API key, when one is set).
 *  `onEvent({type, data, id})` for each event; `onState("open" | "reconnecting")`; after a
 *  dropped connection it reconnects by itself, with `Last-Event-ID` so that the server goes
 *  on after the last event seen, waiting longer after each failed try. A refusal (401, 404
 *  and other answers that are not an event stream) ends it: `onError(ApiError)`.
 *  Returns {close()}, after which no callback is called. */
export function followEvents(path, { onEvent, onState = () => {}, onError = () => {} }) {
  const controller = new AbortController();
  const parser = new SseParser();
  let closed = false;
  let failures = 0;

  const pause = () => new Promise((resolve) => {
    const delay = Math.min(MAX_RETRY_MS, (parser.retry ?? RETRY_MS) * 2 ** Math.min(failures, 4));
    failures += 1;
    const stop = () => { clearTimeout(timer); resolve(); };
    const timer = setTimeout(() => { controller.signal.removeEventListener("abort", stop); resolve(); }, delay);
    controller.signal.addEventListener("abort", stop, { once: true });
  });

  const deliver = (event) => {
    try {
      onEvent(event);
    } catch (err) {
      setTimeout(() => { throw err; }); // reported like a listener's error; the stream goes on
    }
  };

  async function connect() {
    const headers = authHeaders({ Accept: "text/event-stream" });
    if (parser.lastEventId) headers.set("Last-Event-ID", parser.lastEventId);
    let response;
    try {
      response = await fetch(path, { headers, cache: "no-store", signal: controller.signal });
    } catch (_) {
      return "retry"; // no connection (the server restarts?), or closed
    }
    const type = response.headers.get("Content-Type") || "";
    if (!response.ok || !type.startsWith("text/event-stream")) {
      if (RETRY_STATUSES.has(response.status)) {
        response.body?.cancel().catch(() => {});
        return "retry";
      }
      const error = await responseError(response, headers.has("Authorization"));
      if (!closed) {
        closed = true;
        onError(error);
      }
      return "done";
    }
    failures = 0;
    parser.restart();
    onState("open");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || closed) break;
        for (const event of parser.feed(decoder.decode(value, { stream: true }))) {
          if (closed) break;
          deliver(event);
        }
      }
    } catch (_) { /* the connection dropped, or close() */ }
    return "retry";
  }

  (async () => {
    while (!closed) {
      if ((await connect()) === "done" || closed) return;
      onState("reconnecting");
      await pause();
    }
  })();

  return {
    close() {
      closed = true;
      controller.abort();
    },
  };
}
