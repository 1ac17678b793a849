// Talks to the service's OpenAI-compatible API: models, sessions, and chat completions streamed
// over SSE or the WebSocket. Both transports yield the same `chat.completion.chunk` objects.

export class ApiError extends Error {
  constructor(message, { status = 0, code = null, retryAfter = null } = {}) {
    super(message);
    this.status = status;  // 0: the server could not be reached at all
    this.code = code;
    this.retryAfter = retryAfter;  // seconds, from a 429's Retry-After header when readable
  }
}

function aborted() {
  return new DOMException("The request was stopped.", "AbortError");
}

// A stream that ends before its last event: the server stopped or restarted mid-answer.
function connectionLost() {
  return new ApiError("the connection to the server was lost mid-answer", { status: 0, code: "connection_lost" });
}

async function errorFrom(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    if (body?.error?.message) message = body.error.message;
    code = body?.error?.code ?? null;
  } catch { /* the body was not JSON: keep the status line */ }
  const retryAfter = Number.parseInt(response.headers.get("Retry-After") ?? "", 10);
  return new ApiError(message, { status: response.status, code, retryAfter: Number.isFinite(retryAfter) ? retryAfter : null });
}

export class ApiClient {
  constructor(baseUrl, apiKey) {
    this.baseUrl = baseUrl;
    this.apiKey = apiKey;
  }

  headers(extra = {}) {
    return this.apiKey ? { ...extra, Authorization: `Bearer ${this.apiKey}` } : extra;
  }

  // fetch, with a failed connection turned into an ApiError and an error status into another.
  async request(path, { method = "GET", body, signal, keepalive = false } = {}) {
    let response;
    try {
      response = await fetch(`${this.baseUrl}${path}`, {
        method,
        headers: this.headers(body === undefined ? {} : { "Content-Type": "application/json" }),
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
        keepalive,
      });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError(error.message, { status: 0, code: "unreachable" });
    }
    if (!response.ok) throw await errorFrom(response);
    return response;
  }

  async listModels() {
    return (await (await this.request("/v1/models")).json()).data;
  }

  // The system prompt lives in the session, so the server sends it with every turn.
  async createSession(title, systemPrompt) {
    const body = systemPrompt ? { title, system_prompt: systemPrompt } : { title };
    return (await this.request("/v1/sessions", { method: "POST", body })).json();
  }

  // Newest first; with `query`, only sessions whose messages hold every word, each with a
  // `snippet` whose hits are wrapped in **.
  async listSessions(query = "") {
    const search = query ? `&q=${encodeURIComponent(query)}` : "";
    return (await (await this.request(`/v1/sessions?limit=50${search}`)).json()).data;
  }

  async getSession(id) {
    return (await this.request(`/v1/sessions/${encodeURIComponent(id)}`)).json();
  }

  // `keepalive` lets a deletion still due when the page closes reach the server.
  async deleteSession(id, { keepalive = false } = {}) {
    await this.request(`/v1/sessions/${encodeURIComponent(id)}`, { method: "DELETE", keepalive });
  }

  // `changes`: a new `title` and/or `metadata` (replaced whole); resolves to the session.
  async updateSession(id, changes) {
    return (await this.request(`/v1/sessions/${encodeURIComponent(id)}`, { method: "PATCH", body: changes })).json();
  }

  // Stores messages the page already holds (a stopped answer with its question) as the next
  // turn, without generating; resolves to the session with its messages.
  async appendTurn(id, messages) {
    return (await this.request(`/v1/sessions/${encodeURIComponent(id)}/turns`, { method: "POST", body: { messages } })).json();
  }

  // Takes the session's newest turn back; resolves to it (`messages`: what it held).
  async deleteLastTurn(id) {
    return (await this.request(`/v1/sessions/${encodeURIComponent(id)}/turns/last`, { method: "DELETE" })).json();
  }

  // Yields each parsed SSE `data:` payload of a streamed chat completion until [DONE].
  async* streamSse(body, signal) {
    const response = await this.request("/v1/chat/completions", {
      method: "POST",
      body: { ...body, stream: true, stream_options: { include_usage: true } },
      signal,
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      let read;
      try {
        read = await reader.read();
      } catch (error) {
        if (signal?.aborted) throw aborted();
        throw connectionLost();
      }
      if (read.done) throw connectionLost();  // a whole stream ends with [DONE]
      buffer += read.value;
      let boundary;
      while ((boundary = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, boundary);
        buffer = buffer.slice(boundary + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") return;
          const payload = JSON.parse(data);
          if (payload.error) throw new ApiError(payload.error.message, { status: 500, code: payload.error.code });
          yield payload;
        }
      }
    }
  }

  // The same chunks over /v1/ws, then one `{usage}` chunk as SSE's include_usage sends.
  // Aborting the signal sends `cancel` and ends with an AbortError once the server confirms.
  async* streamWebSocket(body, signal) {
    if (signal?.aborted) throw aborted();  // stopped before it began: an abort listener would never fire
    const url = new URL("/v1/ws", this.baseUrl.replace(/^http/, "ws"));
    if (this.apiKey) url.searchParams.set("api_key", this.apiKey);  // browsers cannot set headers on a socket
    const socket = new WebSocket(url);
    const id = crypto.randomUUID();
    const events = [];
    let wake = null;
    let opened = false;
    const push = (event) => { events.push(event); wake?.(); };
    socket.onopen = () => {
      opened = true;
      socket.send(JSON.stringify({ ...body, type: "chat.completion", id }));
    };
    socket.onmessage = ({ data }) => {
      const event = JSON.parse(data);
      if (event.id === id) push(event);
    };
    socket.onclose = () => push({ type: "closed" });
    const cancel = () => {
      if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "cancel", id }));
      else push({ type: "cancelled" });
    };
    signal?.addEventListener("abort", cancel, { once: true });
    try {
      for (;;) {
        if (!events.length) await new Promise((resolve) => { wake = resolve; });
        const event = events.shift();
        if (event.type === "chat.completion.chunk") yield event.chunk;
        else if (event.type === "done") { yield { choices: [], usage: event.usage }; return; }
        else if (event.type === "cancelled") throw aborted();
        else if (event.type === "error") {
          if (signal?.aborted && event.error?.code === "request_not_found") continue;  // cancel crossed done
          throw new ApiError(event.error?.message ?? "the request failed", { status: event.status, code: event.error?.code });
        } else if (event.type === "closed") {
          if (signal?.aborted) throw aborted();
          // A refused handshake tells the page nothing; ask over HTTP why (bad key, server down).
          if (!opened) await this.listModels();
          throw opened ? connectionLost() : new ApiError("the server refused the WebSocket connection", { status: 0, code: "websocket_refused" });
        }
      }
    } finally {
      signal?.removeEventListener("abort", cancel);
      socket.close();
    }
  }
}
