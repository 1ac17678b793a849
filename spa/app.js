// The chat page: settings, model picker, saved chats, and answers that grow as tokens stream.
import { ApiClient } from "./api.js";
import { renderMarkdown } from "./markdown.js";

const elements = {
  baseUrl: document.getElementById("base-url"),
  apiKey: document.getElementById("api-key"),
  transport: document.getElementById("transport-select"),
  systemPrompt: document.getElementById("system-prompt"),
  temperature: document.getElementById("temperature"),
  topP: document.getElementById("top-p"),
  maxTokens: document.getElementById("max-tokens"),
  model: document.getElementById("model-select"),
  settings: document.getElementById("settings"),
  settingsToggle: document.getElementById("settings-toggle"),
  newChat: document.getElementById("new-chat"),
  sessions: document.getElementById("session-list"),
  messages: document.getElementById("messages"),
  composer: document.getElementById("composer"),
  prompt: document.getElementById("prompt"),
  send: document.getElementById("send"),
  stop: document.getElementById("stop"),
  banner: document.getElementById("error-banner"),
};
// Settings kept in localStorage under these names, restored on every visit.
const STORED_SETTINGS = {
  apiBaseUrl: elements.baseUrl,
  apiKey: elements.apiKey,
  transport: elements.transport,
  systemPrompt: elements.systemPrompt,
  temperature: elements.temperature,
  topP: elements.topP,
  maxTokens: elements.maxTokens,
};
const TITLE_LENGTH = 48;
const STATUS_POLL_MS = 2000;  // while a model converts or loads, its status is fetched again
const RECONNECT_MS = 5000;  // while the API cannot be reached, the page tries again
const PHONE_WIDTH = 600;

let sessionId = null;  // the server-side session of this chat, once its first message is sent
let running = null;
let statusTimer = null;

// The API address: ?api= in the page address, then the last one used, then this page's origin.
// ?key= may carry the key; it is stored, then dropped from the address so it stays out of history.
function applyAddressSettings() {
  const parameters = new URLSearchParams(location.search);
  if (parameters.get("api")) localStorage.setItem("apiBaseUrl", parameters.get("api"));
  if (parameters.has("key")) {
    localStorage.setItem("apiKey", parameters.get("key"));
    parameters.delete("key");
    const query = parameters.toString();
    history.replaceState(null, "", `${location.pathname}${query ? `?${query}` : ""}${location.hash}`);
  }
}

function restoreSettings() {
  for (const [name, element] of Object.entries(STORED_SETTINGS)) {
    const value = localStorage.getItem(name);
    if (value !== null) element.value = value;
  }
  if (!elements.baseUrl.value) elements.baseUrl.value = location.origin;
  if (!elements.transport.value) elements.transport.value = "sse";
}

function baseUrl() {
  return elements.baseUrl.value.trim().replace(/\/+$/, "");
}

function api() {
  return new ApiClient(baseUrl(), elements.apiKey.value.trim());
}

// Sampling options as the API names them; an empty field leaves the model's default.
function samplingOptions() {
  const options = {};
  const number = (element) => (element.value.trim() === "" ? null : Number(element.value));
  if (number(elements.temperature) !== null) options.temperature = number(elements.temperature);
  if (number(elements.topP) !== null) options.top_p = number(elements.topP);
  if (number(elements.maxTokens) !== null) options.max_tokens = number(elements.maxTokens);
  return options;
}

function showSettings(open) {
  elements.settings.hidden = !open;
  elements.settingsToggle.setAttribute("aria-expanded", String(open));
}

function showError(message) {
  elements.banner.textContent = message;
  elements.banner.hidden = !message;
}

// What went wrong, in words a person can act on.
function describe(error) {
  if (error.code === "connection_lost") {
    return "The connection to the server was lost mid-answer: it may have stopped or restarted. "
      + "The answer was not saved; send again once the server is back.";
  }
  if (error.status === 401) showSettings(true);  // the key is fixed there
  switch (error.status) {
    case 0: return `Cannot reach the API at ${baseUrl()}. Is the server running, and is the address right?`;
    case 401: return "The API key was refused. Enter a valid key under API key.";
    case 403: return `This API key may not do that: ${error.message}`;
    case 429: return error.retryAfter
      ? `Rate limit reached: the server asks to wait ${error.retryAfter} seconds before trying again. (${error.message})`
      : `Rate limit reached: wait a moment before trying again. (${error.message})`;
    case 503: return `The server is busy or still loading the model; try again shortly. (${error.message})`;
    default: return error.message;
  }
}

function modelLabel(model) {
  const fraction = model.progress?.fraction;
  const status = fraction === undefined ? model.status : `${model.status} ${Math.round(fraction * 100)}%`;
  return `${model.id} · ${status}`;
}

// The picker lists every model with its status; only ready ones can be chosen. It is refreshed
// while a model is on its way. Returns the models, or null when the API could not tell.
async function loadModels() {
  clearTimeout(statusTimer);
  let models;
  try {
    models = await api().listModels();
  } catch (error) {
    elements.model.replaceChildren();
    showError(describe(error));
    if (error.status === 0) statusTimer = setTimeout(connect, RECONNECT_MS, { retrying: true });
    return null;
  }
  const wanted = elements.model.value || localStorage.getItem("model");
  elements.model.replaceChildren(...models.map((model) => {
    const option = new Option(modelLabel(model), model.id);
    option.disabled = model.status !== "ready";
    if (model.error) option.title = model.error;
    return option;
  }));
  const ready = models.filter((model) => model.status === "ready").map((model) => model.id);
  elements.model.value = ready.includes(wanted) ? wanted : (ready[0] ?? "");
  if (models.some((model) => model.status === "converting" || model.status === "loading")) {
    statusTimer = setTimeout(loadModels, STATUS_POLL_MS);
  }
  return models;
}

// Loads models and chats; while the API cannot be reached it tries again every few seconds, and
// the banner goes once it answers. A first failure opens the settings: the address may be wrong.
async function connect({ retrying = false } = {}) {
  const models = await loadModels();
  if (!models) {
    if (!retrying) showSettings(true);
    return;
  }
  showError(models.length ? "" : "The server has no models.");
  await loadSessions().catch((error) => showError(describe(error)));
}

async function loadSessions() {
  const sessions = await api().listSessions();
  elements.sessions.replaceChildren(...sessions.map(sessionItem));
}

function sessionItem(session) {
  const item = document.createElement("li");
  item.dataset.testid = "session-item";
  item.dataset.sessionId = session.id;
  item.classList.toggle("current", session.id === sessionId);
  if (session.id === sessionId) item.setAttribute("aria-current", "true");
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
  elements.messages.replaceChildren();
  for (const message of messages) {
    const element = addMessage(message.role, message.content);
    if (message.role === "assistant") {
      const stats = message.token_count === null ? "saved answer" : `saved answer · ${message.token_count} tokens`;
      element.append(answerFooter(element, message.content, stats));
    }
  }
  updateRegenerate();
}

async function openSession(id) {
  if (running) return;
  showError("");
  try {
    const session = await api().getSession(id);
    const shown = session.messages.filter((message) => ["system", "user", "assistant"].includes(message.role));
    startChat(session.id, shown);
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

// A message's first child holds its text: plain for the user and the system prompt, Markdown
// built from DOM nodes for the model (never innerHTML: model output must not become markup).
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

// Under each answer: its numbers, and Copy and Regenerate (the latter on the last answer only).
function answerFooter(answer, text, statsText) {
  const footer = document.createElement("div");
  footer.className = "answer-footer";
  const stats = document.createElement("span");
  stats.className = "stats";
  stats.dataset.testid = "answer-stats";
  stats.textContent = statsText;
  const copy = actionButton("Copy", "copy-button", "Copy this answer");
  copy.addEventListener("click", () => copyText(text, copy));
  const regenerate = actionButton("Regenerate", "regenerate-button", "Regenerate this answer");
  regenerate.classList.add("regenerate");
  regenerate.addEventListener("click", regenerateLast);
  footer.append(stats, copy, regenerate);
  answer.dataset.text = text;
  return footer;
}

function actionButton(text, testId, label) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "action";
  button.dataset.testid = testId;
  button.textContent = text;
  button.setAttribute("aria-label", label);
  return button;
}

function updateRegenerate() {
  const buttons = elements.messages.querySelectorAll(".regenerate");
  buttons.forEach((button, index) => {
    button.hidden = index !== buttons.length - 1;
    button.disabled = Boolean(running);
  });
}

// The Markdown source, as the model wrote it. The Clipboard API needs a secure context (https or
// loopback); elsewhere a selected textarea and execCommand still work.
async function copyText(text, button) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
    } else {
      const area = Object.assign(document.createElement("textarea"), { value: text });
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  } catch (error) {
    showError(`Could not copy the answer: ${error.message}`);
  }
}

function setRunning(controller) {
  running = controller;
  elements.send.disabled = Boolean(controller);
  elements.stop.hidden = !controller;
  updateRegenerate();
}

// The chunks of one answer, over the chosen transport. The server keeps the chat as a session
// (created with the first message, holding the system prompt), so only new messages go out.
async function answerStream(messages, signal) {
  const client = api();
  if (!sessionId) {
    const systemPrompt = elements.systemPrompt.value.trim();
    sessionId = (await client.createSession(messages.at(-1).content.slice(0, TITLE_LENGTH), systemPrompt)).id;
    if (systemPrompt) elements.messages.prepend(addMessage("system", systemPrompt));
  }
  const body = { model: elements.model.value, session_id: sessionId, messages, ...samplingOptions() };
  return elements.transport.value === "websocket" ? client.streamWebSocket(body, signal) : client.streamSse(body, signal);
}

// Sends `messages` (already shown), the chat's next turn, and streams the answer into a new
// message. `controller` stops it; a caller that set the page running passes its own.
async function send(messages, controller = new AbortController()) {
  showError("");
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
  setRunning(controller);
  const timing = { started: performance.now(), first: null, last: null, pieces: 0, model: elements.model.value };
  let usage = null;
  let outcome = "";
  try {
    for await (const chunk of await answerStream(messages, controller.signal)) {
      if (chunk.usage) usage = chunk.usage;
      if (chunk.model) timing.model = chunk.model;
      const piece = chunk.choices?.[0]?.delta?.content;
      if (piece) {
        timing.first ??= performance.now();
        timing.last = performance.now();
        timing.pieces += 1;
        answerText += piece;
        render();
      }
    }
  } catch (error) {
    // The server saved neither the question nor a partial answer.
    outcome = error.name === "AbortError" ? "stopped" : "not saved";
    if (error.name !== "AbortError") showError(describe(error));
    // Once the server is back the banner goes and the model list is fresh again.
    if (error.status === 0) statusTimer = setTimeout(connect, RECONNECT_MS, { retrying: true });
  } finally {
    answer.classList.remove("streaming");
    renderMarkdown(content, answerText);
    answer.classList.toggle("interrupted", Boolean(outcome));
    answer.append(answerFooter(answer, answerText, statsText(timing, usage, outcome)));
    setRunning(null);
  }
  if (outcome === "not saved") return;
  await loadSessions().catch((error) => showError(describe(error)));
}

// Tokens per second over the decode (first token to last) and the wait for the first token.
// A stopped answer has no usage; each streamed piece is then counted as one token.
function statsText(timing, usage, outcome) {
  const tokens = usage?.completion_tokens ?? timing.pieces;
  const seconds = timing.first === null ? 0 : (timing.last - timing.first) / 1000;
  const rate = seconds > 0 && tokens > 1 ? ((tokens - 1) / seconds).toFixed(1) : "–";
  const ttft = timing.first === null ? "–" : ((timing.first - timing.started) / 1000).toFixed(2);
  const parts = [timing.model, `${tokens} tokens`, `${rate} tok/s`, `first token ${ttft} s`];
  return (outcome ? [outcome, ...parts] : parts).join(" · ");
}

// Regenerates the last answer in the same session. A saved answer's turn is taken back out of
// the session first, and the messages it held are asked again; an answer that was never saved
// (stopped, failed) left nothing to take back, so its question is simply asked again.
async function regenerateLast() {
  if (running) return;
  const answer = [...elements.messages.querySelectorAll('[data-testid="message-assistant"]')].at(-1);
  const question = [...elements.messages.querySelectorAll('[data-testid="message-user"]')].at(-1)?.textContent;
  if (!answer || !question) return;
  showError("");
  // Running from here on: a second click must not take back a second turn. Stop is honoured once
  // the answer is asked for, so the page never loses track of what the server holds.
  const controller = new AbortController();
  setRunning(controller);
  let messages = [{ role: "user", content: question }];
  if (!answer.classList.contains("interrupted")) {
    try {
      const removed = await api().deleteLastTurn(sessionId);
      messages = removed.messages.filter((message) => message.role !== "assistant").map(({ role, content }) => ({ role, content }));
    } catch (error) {
      setRunning(null);
      showError(describe(error));
      return;
    }
  }
  answer.remove();
  await send(messages, controller);
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
  addMessage("user", text);
  send([{ role: "user", content: text }]);
});
elements.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
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
elements.settingsToggle.addEventListener("click", () => {
  showSettings(elements.settings.hidden);
  localStorage.setItem("settingsOpen", String(!elements.settings.hidden));
});
elements.model.addEventListener("change", () => localStorage.setItem("model", elements.model.value));
for (const [name, element] of Object.entries(STORED_SETTINGS)) {
  element.addEventListener("change", () => {
    localStorage.setItem(name, name === "apiBaseUrl" ? baseUrl() : element.value.trim());
    if (name === "apiBaseUrl" || name === "apiKey") {
      if (!running) startChat(null, []);  // the open chat belongs to the previous server or key
      connect();
    }
  });
}

applyAddressSettings();
restoreSettings();
// Open on a wide screen unless closed before; on a phone it would hide the chat.
const settingsOpen = localStorage.getItem("settingsOpen");
showSettings(settingsOpen === null ? window.innerWidth > PHONE_WIDTH : settingsOpen === "true");
connect();
