// The console's client of the operators' API: bearer token on every call, the error shape
// turned into ApiError, and the live stream read with fetch (EventSource cannot send a token
// header, and a token in the URL would land in logs), reconnecting by itself.

const TOKEN_KEY = "citybrain.token";

export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

export class Unauthorized extends ApiError {}

export function savedToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function saveToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export async function call(method, path, body) {
  const headers = { Authorization: `Bearer ${savedToken() ?? ""}` };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = await response.json().catch(() => null);
  if (response.ok) return data;
  const error = data?.error ?? { code: "http", message: `HTTP ${response.status}` };
  const Kind = response.status === 401 ? Unauthorized : ApiError;
  throw new Kind(response.status, error.code, error.message, error.field);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Reads GET /v1/events until stop() or a 401; on any loss waits (1 s doubling to 15 s, or
// the server's retry) and connects again. onState("live" | "reconnecting" | "connecting",
// seconds) lets the page say so; onOpen runs on every (re)connection, so the page can fetch
// what it may have missed.
export function stream({ onEvent, onState, onOpen, onUnauthorized }) {
  let stopped = false;
  let controller = null;
  (async () => {
    let delay = 1000;
    while (!stopped) {
      controller = new AbortController();
      let watchdog = null;
      const feed = () => {
        clearTimeout(watchdog);
        // the server speaks at least every 15 s; silence for 35 s is a dead connection
        watchdog = setTimeout(() => controller.abort(), 35000);
      };
      try {
        onState("connecting");
        const response = await fetch("/v1/events", {
          headers: { Authorization: `Bearer ${savedToken() ?? ""}`, Accept: "text/event-stream" },
          signal: controller.signal,
          cache: "no-store",
        });
        if (response.status === 401) {
          onUnauthorized();
          return;
        }
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        feed();
        onState("live");
        delay = 1000;
        await onOpen();
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          feed();
          buffer += value;
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const event = { kind: "message", data: "" };
            for (const line of block.split("\n")) {
              if (line.startsWith(":")) continue;
              const colon = line.indexOf(":");
              const name = colon < 0 ? line : line.slice(0, colon);
              const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
              if (name === "event") event.kind = text;
              else if (name === "data") event.data += text;
              else if (name === "id") event.id = Number(text);
              else if (name === "retry") delay = Math.max(500, Number(text) || delay);
            }
            if (event.data) onEvent(event.kind, JSON.parse(event.data), event.id);
          }
        }
      } catch (error) {
        if (stopped) return;
      } finally {
        clearTimeout(watchdog);
      }
      if (stopped) return;
      onState("reconnecting", delay / 1000);
      await sleep(delay);
      delay = Math.min(delay * 2, 15000);
    }
  })();
  return {
    stop() {
      stopped = true;
      controller?.abort();
    },
    // for tests and for a person: drop the connection, as a network would
    drop() {
      controller?.abort();
    },
  };
}
