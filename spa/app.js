// The chat page: settings, model picker, saved chats, and answers that grow as tokens stream.
import { ApiClient } from "./api.js";
import { renderMarkdown } from "./markdown.js";

const elements = {
  baseUrl: document.getElementById("base-url"),
  apiKey: document.getElementById("api-key"),
  transport: document.getElementById("transport-select"),
  model: document.getElementById("model-select"),
  newChat: document.getElementById("new-chat"),
  sessionNote: document.getElementById("session-note"),
  sessions: document.getElementById("session-list"),
  messages: document.getElementById("messages"),
  composer: document.getElementById("composer"),
  prompt: document.getElementById("prompt"),
  send: document.getElementById("send"),
  stop: document.getElementById("stop"),
  banner: document.getElementById("error-banner"),
};
const TITLE_LENGTH = 48;
let conversation = [];
let sessionId = null;  // the server-side session of this chat, once its first message is sent
let running = null;

// The API address: ?api= in the page address, then the last one used, then this page's origin.
function initialBaseUrl() {
  const fromAddress = new URLSearchParams(location.search).get("api");
  if (fromAddress) {
    localStorage.setItem("apiBaseUrl", fromAddress);
    return fromAddress;
  }
  return localStorage.getItem("apiBaseUrl") || location.origin;
}

function baseUrl() {
  return elements.baseUrl.value.trim().replace(/\/+$/, "");
}

function api() {
  return new ApiClient(baseUrl(), elements.apiKey.value.trim());
}

// The server keeps sessions for SSE requests only (the WebSocket API refuses `session_id`).
function usesSessions() {
  return elements.transport.value === "sse";
}

function showError(message) {
  elements.banner.textContent = message;
  elements.banner.hidden = !message;
}

// What went wrong, in words a person can act on.
function describe(error) {
  switch (error.status) {
    case 0: return `Cannot reach the API at ${baseUrl()}. Is the server running, and is the address right?`;
    case 401: return "The API key was refused. Enter a valid key under API key.";
    case 403: return `This API key may not do that: ${error.message}`;
    case 429: return error.retryAfter
      ? `Too many requests: the server asks to wait ${error.retryAfter} seconds before trying again.`
      : "Too many requests: wait a moment before trying again.";
    case 503: return `The server is busy or still loading the model; try again shortly. (${error.message})`;
    default: return error.message;
  }
}

async function loadModels() {
  showError("");
  elements.model.replaceChildren();
  try {
    const models = await api().listModels();
    for (const model of models) {
      const option = new Option(model.status === "ready" ? model.id : `${model.id} (${model.status})`, model.id);
      option.disabled = model.status !== "ready";
      elements.model.append(option);
    }
    if (!models.length) showError("The server has no models.");
    await loadSessions();
  } catch (error) {
    showError(describe(error));
  }
}

async function loadSessions() {
  const sessions = await api().listSessions();
  elements.sessions.replaceChildren(...sessions.map(sessionItem));
}

function sessionItem(session) {
  const item = document.createElement("li");
  item.dataset.testid = "session-item";
  item.classList.toggle("current", session.id === sessionId);
  const open = document.createElement("button");
  open.type = "button";
  open.className = "open";
  open.dataset.testid = "session-open";
  open.textContent = session.title || "Untitled chat";
  open.title = session.title || "";
  open.addEventListener("click", () => openSession(session.id));
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "delete";
  remove.dataset.testid = "session-delete";
  remove.textContent = "✕";
  remove.setAttribute("aria-label", `Delete chat ${session.title || ""}`);
  remove.addEventListener("click", () => deleteSession(session.id));
  item.append(open, remove);
  return item;
}

function startChat(id, messages) {
  sessionId = id;
  conversation = messages;
  elements.messages.replaceChildren();
  for (const message of messages) addMessage(message.role, message.content);
}

async function openSession(id) {
  if (running) return;
  showError("");
  try {
    const session = await api().getSession(id);
    const messages = session.messages
      .filter((message) => message.role === "user" || message.role === "assistant")
      .map(({ role, content }) => ({ role, content }));
    startChat(session.id, messages);
    await loadSessions();
  } catch (error) {
    showError(describe(error));
  }
}

async function deleteSession(id) {
  showError("");
  try {
    await api().deleteSession(id);
    if (id === sessionId) startChat(null, []);
    await loadSessions();
  } catch (error) {
    showError(describe(error));
  }
}

// A message's first child holds its text: plain for the user, Markdown built from DOM nodes for
// the model (never innerHTML: model output must not become markup).
function addMessage(role, text) {
  const element = document.createElement("div");
  element.className = `message ${role}`;
  element.dataset.testid = `message-${role}`;
  const content = document.createElement("div");
  content.className = "content";
  if (role === "assistant") renderMarkdown(content, text);
  else content.textContent = text;
  element.append(content);
  elements.messages.append(element);
  element.scrollIntoView({ block: "end" });
  return element;
}

function setRunning(controller) {
  running = controller;
  elements.send.disabled = Boolean(controller);
  elements.stop.hidden = !controller;
}

// The chunks of one answer, over the chosen transport. With a session the server holds the
// history, so only the new message goes out; otherwise the whole conversation does.
async function answerStream(text, signal) {
  const client = api();
  const body = { model: elements.model.value };
  if (!usesSessions()) return client.streamWebSocket({ ...body, messages: conversation }, signal);
  if (!sessionId) {
    sessionId = (await client.createSession(text.slice(0, TITLE_LENGTH))).id;
  }
  return client.streamSse({ ...body, session_id: sessionId, messages: [{ role: "user", content: text }] }, signal);
}

async function send(text) {
  showError("");
  conversation.push({ role: "user", content: text });
  addMessage("user", text);
  const answer = addMessage("assistant", "");
  const content = answer.firstChild;
  let answerText = "";
  let rendering = false;
  const render = () => {  // at most once a frame, however fast tokens arrive
    if (rendering) return;
    rendering = true;
    requestAnimationFrame(() => {
      rendering = false;
      renderMarkdown(content, answerText);
      answer.scrollIntoView({ block: "end" });
    });
  };
  answer.classList.add("streaming");
  const controller = new AbortController();
  setRunning(controller);
  const started = performance.now();
  let firstTokenAt = null;
  let usage = null;
  try {
    for await (const chunk of await answerStream(text, controller.signal)) {
      if (chunk.usage) usage = chunk.usage;
      const piece = chunk.choices?.[0]?.delta?.content;
      if (piece) {
        firstTokenAt ??= performance.now();
        answerText += piece;
        render();
      }
    }
    renderMarkdown(content, answerText);
    conversation.push({ role: "assistant", content: answerText });
    answer.append(statsLine(started, firstTokenAt, usage));
  } catch (error) {
    if (error.name !== "AbortError") showError(describe(error));
    conversation.pop();
  } finally {
    answer.classList.remove("streaming");
    setRunning(null);
  }
  if (usesSessions()) loadSessions().catch((error) => showError(describe(error)));
}

function statsLine(started, firstTokenAt, usage) {
  const stats = document.createElement("div");
  stats.className = "stats";
  const seconds = (performance.now() - (firstTokenAt ?? started)) / 1000;
  const tokens = usage?.completion_tokens ?? 0;
  const rate = seconds > 0 && tokens > 1 ? ((tokens - 1) / seconds).toFixed(1) : "–";
  const ttft = firstTokenAt ? ((firstTokenAt - started) / 1000).toFixed(2) : "–";
  stats.textContent = `${tokens} tokens · ${rate} tok/s · first token ${ttft} s`;
  return stats;
}

function showTransport() {
  elements.sessionNote.hidden = usesSessions();
}

elements.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = elements.prompt.value.trim();
  if (!text || running) return;
  if (!elements.model.value) {
    showError("Pick a model first.");
    return;
  }
  elements.prompt.value = "";
  send(text);
});
elements.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    elements.composer.requestSubmit();
  }
});
elements.stop.addEventListener("click", () => running?.abort());
elements.newChat.addEventListener("click", () => {
  if (running) return;
  startChat(null, []);
  loadSessions().catch((error) => showError(describe(error)));
  elements.prompt.focus();
});
elements.baseUrl.addEventListener("change", () => {
  localStorage.setItem("apiBaseUrl", baseUrl());
  loadModels();
});
elements.apiKey.addEventListener("change", () => {
  localStorage.setItem("apiKey", elements.apiKey.value.trim());
  loadModels();
});
elements.transport.addEventListener("change", () => {
  localStorage.setItem("transport", elements.transport.value);
  showTransport();
});

elements.baseUrl.value = initialBaseUrl();
elements.apiKey.value = localStorage.getItem("apiKey") ?? "";
elements.transport.value = localStorage.getItem("transport") === "websocket" ? "websocket" : "sse";
showTransport();
loadModels();
