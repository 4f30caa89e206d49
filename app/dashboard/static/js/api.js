// Talking to the gkd API from the browser: the key lives in sessionStorage (never in a URL) and goes in
// the Authorization header of every request, downloads and the event stream included.

const KEY = "gkd.apiKey";

export const auth = {
  get key() { return sessionStorage.getItem(KEY); },
  set(key) { sessionStorage.setItem(KEY, key); },
  clear() { sessionStorage.removeItem(KEY); },
};

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.type = err.type || null;
    this.code = err.code || null;
    this.param = err.param || null;
  }
}

function headers(extra) {
  const h = new Headers(extra || {});
  if (auth.key) h.set("Authorization", `Bearer ${auth.key}`);
  return h;
}

async function failure(response) {
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  const error = new ApiError(response.status, body);
  if (response.status === 401) window.dispatchEvent(new CustomEvent("gkd:unauthorized", { detail: error }));
  return error;
}

/** JSON request; `json` becomes the body. Throws ApiError with the API's error envelope. */
export async function api(path, { method = "GET", json, body, headers: extra, signal } = {}) {
  const h = headers(extra);
  if (json !== undefined) {
    h.set("Content-Type", "application/json");
    body = JSON.stringify(json);
  }
  const response = await fetch(path, { method, headers: h, body, signal, cache: "no-store" });
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

/** Every page of a list endpoint (at most `max` items). */
export async function listAll(path, max = 500) {
  const items = [];
  let after = null;
  do {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(`${path}${sep}limit=100${after ? `&after=${encodeURIComponent(after)}` : ""}`);
    items.push(...page.data);
    after = page.has_more ? page.next_cursor : null;
  } while (after && items.length < max);
  return items;
}

/** Download with the Authorization header: fetch as a blob, then save it under `filename`. */
export async function download(path, filename) {
  const response = await fetch(path, { headers: headers(), cache: "no-store" });
  if (!response.ok) throw await failure(response);
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  return blob.size;
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
});

/** Parse complete SSE messages out of `buffer`; returns [messages, rest]. */
export function parseSse(buffer) {
  const messages = [];
  const text = buffer.replace(/\r\n?/g, "\n");
  const blocks = text.split("\n\n");
  const rest = blocks.pop();
  for (const block of blocks) {
    const msg = { id: null, event: "message", data: [], retry: null };
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "id") msg.id = value;
      else if (field === "event") msg.event = value;
      else if (field === "data") msg.data.push(value);
      else if (field === "retry" && /^\d+$/.test(value)) msg.retry = Number(value);
    }
    messages.push(msg);
  }
  return [messages, rest];
}

/**
 * Follow /v1/jobs/{id}/events/stream with fetch() (EventSource cannot send headers). Reconnects with
 * Last-Event-ID after network errors, so no event is lost or repeated. `onEvent(event)` returns true for
 * the terminal event; `onState(state)` gets "connecting" | "live" | "reconnecting" | "ended" | "error".
 * `isFinished()` is asked when the server closes the stream without a terminal event.
 */
export async function followEvents(jobId, { onEvent, onState = () => {}, isFinished, signal }) {
  let last = 0;
  let retry = 2000;
  let failures = 0;
  while (!signal.aborted) {
    onState(failures ? "reconnecting" : "connecting");
    try {
      const h = headers({ Accept: "text/event-stream" });
      if (last) h.set("Last-Event-ID", String(last));
      const response = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/events/stream`,
        { headers: h, signal, cache: "no-store" });
      if (!response.ok) {
        const error = await failure(response);
        if (response.status < 500) { onState("error", error); return; }
        throw error;
      }
      onState("live");
      failures = 0;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        let messages;
        [messages, buffer] = parseSse(buffer + value);
        for (const msg of messages) {
          if (msg.retry !== null) retry = msg.retry;
          if (!msg.data.length) continue;
          const event = JSON.parse(msg.data.join("\n"));
          if (msg.id !== null && /^\d+$/.test(msg.id)) last = Number(msg.id);
          if (onEvent(event)) { reader.cancel().catch(() => {}); onState("ended"); return; }
        }
      }
      if (isFinished && await isFinished()) { onState("ended"); return; }
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof ApiError && error.status < 500) { onState("error", error); return; }
    }
    failures += 1;
    onState("reconnecting");
    await sleep(Math.min(retry * failures, 15_000), signal);
  }
}
