// The chat page: settings, model picker, saved chats, and answers that grow as tokens stream.
import { ApiClient } from "./api.js";
import { ChatList } from "./chat_list.js";
import { conversationMarkdown, download, fileName } from "./export.js";
import { renderMarkdown } from "./markdown.js";
import { setupThemeToggle } from "./theme.js";

const elements = {
  baseUrl: document.getElementById("base-url"),
  apiKey: document.getElementById("api-key"),
  transport: document.getElementById("transport-select"),
  systemPrompt: document.getElementById("system-prompt"),
  temperature: document.getElementById("temperature"),
  topP: document.getElementById("top-p"),
  maxTokens: document.getElementById("max-tokens"),
  seed: document.getElementById("seed"),
  defaults: document.getElementById("settings-defaults"),
  resetSettings: document.getElementById("settings-reset"),
  themeToggle: document.getElementById("theme-toggle"),
  search: document.getElementById("session-search"),
  undoBar: document.getElementById("undo-bar"),
  undoText: document.getElementById("undo-text"),
  undoDelete: document.getElementById("undo-delete"),
  exportMarkdown: document.getElementById("export-markdown"),
  exportJson: document.getElementById("export-json"),
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
  seed: elements.seed,
};
// Small models ramble at temperature 1 with no limit: unless the model's generation.json says
// otherwise, the page asks for these. Seed stays empty (random) unless set.
const FALLBACK_TEMPERATURE = 0.7;
const DEFAULT_MAX_TOKENS = 512;

const TITLE_LENGTH = 48;
const STATUS_POLL_MS = 2000;  // while a model converts or loads, its status is fetched again
const RECONNECT_MS = 5000;  // while the API cannot be reached, the page tries again
const PHONE_WIDTH = 600;

let sessionId = null;  // the server-side session of this chat, once its first message is sent
let sessionMetadata = {};  // its metadata: `partial_turns` lists the turns whose answer was cut short
let running = null;
let statusTimer = null;
const chats = new ChatList(
  { list: elements.sessions, search: elements.search, undoBar: elements.undoBar, undoText: elements.undoText, undoButton: elements.undoDelete },
  {
    client: () => api(),
    currentId: () => sessionId,
    open: (id) => openSession(id),
    closeCurrent: () => { if (!running) startChat(null, []); },
    report: (error) => showError(describe(error)),
  },
);
let models = new Map();  // id -> the API's description, with its generation_defaults
let pendingTurn = null;  // a cut-short answer the server could not be told about yet

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
  if (number(elements.seed) !== null) options.seed = number(elements.seed);
  return options;
}

// The chosen model's defaults, as the settings fields hold them.
function modelDefaults() {
  const defaults = models.get(elements.model.value)?.generation_defaults ?? {};
  return {
    temperature: String(defaults.temperature ?? FALLBACK_TEMPERATURE),
    topP: defaults.top_p === undefined ? "" : String(defaults.top_p),
    maxTokens: String(DEFAULT_MAX_TOKENS),
  };
}

// Fills the generation settings a person has not set with the model's defaults (never the field
// being typed in: the model list is refreshed while a model loads); `reset` forgets what they
// set (the seed too) first.
function applyDefaults({ reset = false } = {}) {
  const defaults = modelDefaults();
  for (const [name, value] of Object.entries(defaults)) {
    if (reset) localStorage.removeItem(name);
    const field = STORED_SETTINGS[name];
    if (localStorage.getItem(name) === null && (reset || field !== document.activeElement)) field.value = value;
  }
  if (reset) {
    localStorage.removeItem("seed");
    elements.seed.value = "";
  }
  const topP = defaults.topP === "" ? "the server's" : defaults.topP;
  elements.defaults.textContent = `Defaults for ${elements.model.value || "this model"}: temperature ${defaults.temperature}, `
    + `top p ${topP}, max tokens ${defaults.maxTokens}, random seed.`;
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
      + "What arrived is kept, and saved as a partial answer once the server is back.";
  }
  if (error.status === 401) showSettings(true);  // the key is fixed there
  switch (error.status) {
    case 0: return `Cannot reach the API at ${baseUrl()}. Is the server running, and is the address right?`;
    case 404: return error.code === "session_not_found" ? "This chat no longer exists on the server." : error.message;
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
  let listed;
  try {
    listed = await api().listModels();
  } catch (error) {
    elements.model.replaceChildren();
    showError(describe(error));
    if (error.status === 0) statusTimer = setTimeout(connect, RECONNECT_MS, { retrying: true });
    return null;
  }
  models = new Map(listed.map((model) => [model.id, model]));
  const wanted = elements.model.value || localStorage.getItem("model");
  elements.model.replaceChildren(...listed.map((model) => {
    const option = new Option(modelLabel(model), model.id);
    option.disabled = model.status !== "ready";
    if (model.error) option.title = model.error;
    return option;
  }));
  const ready = listed.filter((model) => model.status === "ready").map((model) => model.id);
  elements.model.value = ready.includes(wanted) ? wanted : (ready[0] ?? "");
  applyDefaults();
  if (listed.some((model) => model.status === "converting" || model.status === "loading")) {
    statusTimer = setTimeout(loadModels, STATUS_POLL_MS);
  }
  return listed;
}

// Loads models and chats; while the API cannot be reached it tries again every few seconds, and
// the banner goes once it answers. A first failure opens the settings: the address may be wrong.
async function connect({ retrying = false } = {}) {
  const listed = await loadModels();
  if (!listed) {
    if (!retrying) showSettings(true);
    return;
  }
  showError(listed.length ? "" : "The server has no models.");
  await savePendingTurn().catch((error) => showError(describe(error)));
  await chats.refresh();
}

function startChat(id, messages, metadata = {}) {
  sessionId = id;
  sessionMetadata = metadata;
  elements.messages.replaceChildren();
  const partial = partialTurns(metadata);
  for (const message of messages) {
    const element = addMessage(message.role, message.content);
    if (message.role === "assistant") {
      const cutShort = partial.has(message.turn);
      const count = message.token_count === null ? "" : ` · ${message.token_count} tokens`;
      element.classList.toggle("interrupted", cutShort);
      element.append(answerFooter(element, message.content, `saved answer${count}`, cutShort ? "partial answer" : ""));
      element.dataset.saved = "true";
    }
  }
  elements.exportMarkdown.disabled = elements.exportJson.disabled = !id;
  updateRegenerate();
}

async function openSession(id) {
  if (running) return;
  showError("");
  try {
    const session = await api().getSession(id);
    const shown = session.messages.filter((message) => ["system", "user", "assistant"].includes(message.role));
    startChat(session.id, shown, session.metadata);
    await chats.refresh();
  } catch (error) {
    showError(describe(error));
  }
}

// A message's first child holds its text: plain for the user and the system prompt, sanitized
// Markdown for the model (renderMarkdown: model output never becomes markup of its own).
function addMessage(role, text) {
  const element = document.createElement("div");
  element.className = `message ${role}`;
  element.dataset.testid = `message-${role}`;
  const content = document.createElement("div");
  content.className = "content";
  if (role === "assistant") content.innerHTML = renderMarkdown(text);
  else content.textContent = text;
  element.append(content);
  elements.messages.append(element);
  if (role === "user") elements.messages.append(userFooter(element));
  element.scrollIntoView({ block: "end" });
  return element;
}

// Under each question, beside it rather than in it: Edit, which asks it again reworded (the
// turns after it are replaced).
function userFooter(message) {
  const footer = document.createElement("div");
  footer.className = "question-footer";
  const edit = actionButton("Edit", "edit-button", "Edit this message and send it again");
  edit.addEventListener("click", () => startEdit(message));
  footer.append(edit);
  return footer;
}

function startEdit(message) {
  if (running || message.querySelector("textarea")) return;
  const content = message.firstChild;
  const editor = document.createElement("div");
  editor.className = "editor";
  const area = Object.assign(document.createElement("textarea"), { value: content.textContent, rows: 3 });
  area.dataset.testid = "edit-input";
  area.setAttribute("aria-label", "Edited message");
  const save = actionButton("Send", "edit-send", "Send the edited message");
  const cancel = actionButton("Cancel", "edit-cancel", "Keep the message as it was");
  editor.append(area, save, cancel);
  content.hidden = true;
  message.append(editor);
  area.focus();
  const close = () => { editor.remove(); content.hidden = false; };
  cancel.addEventListener("click", close);
  save.addEventListener("click", () => {
    const text = area.value.trim();
    if (!text) return;
    close();
    editAndResend(message, text);
  });
  area.addEventListener("keydown", (event) => {
    if (event.key === "Escape") { event.stopPropagation(); close(); }
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); save.click(); }
  });
}

// Takes back the edited question's turn and every later one (newest first, as the API takes
// turns back), then asks the new text in the same chat.
async function editAndResend(message, text) {
  if (running) return;
  showError("");
  const controller = new AbortController();
  setRunning(controller);
  try {
    if (sessionId) {
      const asked = [...elements.messages.querySelectorAll('[data-testid="message-user"]')].indexOf(message);
      const session = await api().getSession(sessionId);
      const turn = session.messages.filter((stored) => stored.role === "user")[asked]?.turn;
      if (turn !== undefined) {
        const newest = Math.max(...session.messages.map((stored) => stored.turn));
        for (let removed = newest; removed >= turn; removed -= 1) await api().deleteLastTurn(sessionId);
        const kept = [...partialTurns(sessionMetadata)].filter((number) => number < turn);
        await keepPartialTurns(sessionId, sessionMetadata, new Set(kept));
      }
    }
  } catch (error) {
    setRunning(null);
    showError(describe(error));
    return;
  }
  if (pendingTurn?.sessionId === sessionId) pendingTurn = null;
  while (message.nextElementSibling) message.nextElementSibling.remove();
  message.remove();
  addMessage("user", text);
  await send([{ role: "user", content: text }], controller);
}

// Under each answer: its numbers, a mark when it was cut short, and Copy and Regenerate (the
// latter on the last answer only).
function answerFooter(answer, text, statsText, note = "") {
  const footer = document.createElement("div");
  footer.className = "answer-footer";
  const stats = document.createElement("span");
  stats.className = "stats";
  stats.dataset.testid = "answer-stats";
  stats.textContent = statsText;
  const partial = document.createElement("span");
  partial.className = "partial";
  partial.dataset.testid = "partial-note";
  partial.textContent = note;
  partial.hidden = !note;
  const copy = actionButton("Copy", "copy-button", "Copy this answer");
  copy.addEventListener("click", () => copyText(text, copy));
  const regenerate = actionButton("Regenerate", "regenerate-button", "Regenerate this answer");
  regenerate.classList.add("regenerate");
  regenerate.addEventListener("click", regenerateLast);
  footer.append(stats, partial, copy, regenerate);
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
  elements.messages.querySelectorAll('[data-testid="edit-button"]').forEach((button) => { button.disabled = Boolean(running); });
}

// The Markdown source, as the model wrote it. The Clipboard API needs a secure context (https or
// loopback); elsewhere a selected textarea and execCommand still work.
async function copyText(text, button) {
  const label = button.textContent;
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
    setTimeout(() => { button.textContent = label; }, 1500);
  } catch (error) {
    showError(`Could not copy: ${error.message}`);
  }
}

function setRunning(controller) {
  running = controller;
  elements.send.disabled = Boolean(controller);
  elements.stop.hidden = !controller;
  updateRegenerate();
}

// The turns of this chat whose answer was cut short, kept in the session's metadata so a
// reopened chat can mark them (the API stores a turn's messages, not how it ended).
function partialTurns(metadata) {
  return new Set((metadata?.partial_turns ?? "").split(" ").filter(Boolean).map(Number));
}

// Stores `turns` as session `id`'s partial turns, the rest of its `metadata` as it is.
async function keepPartialTurns(id, metadata, turns) {
  const listed = [...turns].sort((a, b) => a - b).join(" ");
  if (listed === (metadata.partial_turns ?? "")) return;
  const changed = { ...metadata };
  if (listed) changed.partial_turns = listed;
  else delete changed.partial_turns;
  const session = await api().updateSession(id, { metadata: changed });
  if (id === sessionId) sessionMetadata = session.metadata;
}

// A stopped or failed answer is stored with its question as a turn of its own, marked partial,
// so reopening the chat shows what the person saw. While the server cannot be reached it waits
// in `pendingTurn` and is stored once the page reconnects.
async function savePartialTurn(turn) {
  const session = await api().appendTurn(turn.sessionId, [...turn.messages, { role: "assistant", content: turn.text }]);
  const number = Math.max(...session.messages.map((message) => message.turn));
  await keepPartialTurns(turn.sessionId, session.metadata, new Set([...partialTurns(session.metadata), number]));
  turn.answer.dataset.saved = "true";
  turn.answer.querySelector('[data-testid="partial-note"]').textContent = "partial answer · saved";
}

async function savePendingTurn() {
  if (!pendingTurn) return;
  const turn = pendingTurn;
  await savePartialTurn(turn);
  if (pendingTurn === turn) pendingTurn = null;
}

// The chunks of one answer, over the chosen transport. The server keeps the chat as a session
// (created with the first message, holding the system prompt), so only new messages go out.
async function answerStream(messages, signal) {
  const client = api();
  await savePendingTurn();  // its turn comes before this one
  if (!sessionId) {
    const systemPrompt = elements.systemPrompt.value.trim();
    const session = await client.createSession(messages.at(-1).content.slice(0, TITLE_LENGTH), systemPrompt);
    sessionId = session.id;
    sessionMetadata = session.metadata;
    elements.exportMarkdown.disabled = elements.exportJson.disabled = false;
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
      content.innerHTML = renderMarkdown(answerText);
      answer.scrollIntoView({ block: "end" });
    });
  };
  answer.classList.add("streaming");
  setRunning(controller);
  const timing = { started: performance.now(), first: null, last: null, pieces: 0, model: elements.model.value };
  let usage = null;
  let outcome = "";
  let failure = null;
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
    answer.dataset.saved = "true";  // the server stored the turn before its last event
  } catch (error) {
    outcome = error.name === "AbortError" ? "stopped" : "failed";
    failure = error;
  }
  answer.classList.remove("streaming");
  content.innerHTML = renderMarkdown(answerText);
  answer.classList.toggle("interrupted", Boolean(outcome));
  if (failure && failure.name !== "AbortError") showError(describe(failure));
  // The server stored nothing of a stopped or failed answer; the page stores what it has. A
  // request refused before any text (a bad setting, a rate limit) is not an answer to keep.
  const cutShort = outcome === "stopped" || (failure !== null && (answerText !== "" || failure.code === "connection_lost"));
  const note = cutShort && sessionId ? "partial answer · not saved yet" : (outcome && "not saved");
  answer.append(answerFooter(answer, answerText, statsText(timing, usage, outcome), note));
  if (cutShort && sessionId) {
    pendingTurn = { sessionId, messages, text: answerText, answer };
    try {
      await savePendingTurn();
    } catch (error) {
      if (error.status !== 0) showError(describe(error));
    }
  }
  setRunning(null);
  // Once the server is back the banner goes, the model list is fresh again and what was not
  // stored is.
  if (failure?.status === 0) {
    statusTimer = setTimeout(connect, RECONNECT_MS, { retrying: true });
    return;
  }
  await chats.refresh();
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

// Regenerates the last answer in the same session: its turn (whole or partial) is taken back
// out of the session first and the messages it held are asked again. An answer the server does
// not hold yet (its partial turn still waiting to be stored) is simply asked again.
async function regenerateLast() {
  if (running) return;
  const answer = [...elements.messages.querySelectorAll('[data-testid="message-assistant"]')].at(-1);
  const question = [...elements.messages.querySelectorAll('[data-testid="message-user"]')].at(-1)?.firstChild.textContent;
  if (!answer || !question) return;
  showError("");
  // Running from here on: a second click must not take back a second turn. Stop is honoured once
  // the answer is asked for, so the page never loses track of what the server holds.
  const controller = new AbortController();
  setRunning(controller);
  let messages = [{ role: "user", content: question }];
  if (answer.dataset.saved === "true") {
    try {
      const removed = await api().deleteLastTurn(sessionId);
      messages = removed.messages.filter((message) => message.role !== "assistant").map(({ role, content }) => ({ role, content }));
      const partial = partialTurns(sessionMetadata);
      partial.delete(removed.turn);
      await keepPartialTurns(sessionId, sessionMetadata, partial);
    } catch (error) {
      setRunning(null);
      showError(describe(error));
      return;
    }
  } else if (pendingTurn?.answer === answer) {
    pendingTurn = null;
  }
  answer.remove();
  await send(messages, controller);
}

// Export: the chat as the server holds it.
async function exportChat(format) {
  try {
    const session = await api().getSession(sessionId);
    if (format === "json") download(fileName(session, "json"), `${JSON.stringify(session, null, 2)}\n`, "application/json");
    else download(fileName(session, "md"), conversationMarkdown(session, partialTurns(session.metadata)), "text/markdown");
  } catch (error) {
    showError(describe(error));
  }
}

// A code block's Copy button (sanitized answer HTML carries no handlers of its own).
elements.messages.addEventListener("click", (event) => {
  const button = event.target.closest(".code-copy");
  if (button) copyText(button.closest(".code-block").querySelector("pre code").textContent, button);
});
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
// Esc stops the answer being written; Ctrl+K (Cmd+K) goes to the search box.
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && running) {
    event.preventDefault();
    running.abort();
  }
  if (event.key.toLowerCase() === "k" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    chats.focusSearch();
  }
});
elements.stop.addEventListener("click", () => running?.abort());
elements.newChat.addEventListener("click", () => {
  if (running) return;
  startChat(null, []);
  chats.refresh();
  elements.prompt.focus();
});
elements.exportMarkdown.addEventListener("click", () => exportChat("markdown"));
elements.exportJson.addEventListener("click", () => exportChat("json"));
elements.settingsToggle.addEventListener("click", () => {
  showSettings(elements.settings.hidden);
  localStorage.setItem("settingsOpen", String(!elements.settings.hidden));
});
elements.resetSettings.addEventListener("click", () => applyDefaults({ reset: true }));
elements.model.addEventListener("change", () => {
  localStorage.setItem("model", elements.model.value);
  applyDefaults();
});
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
setupThemeToggle(elements.themeToggle);
// Open on a wide screen unless closed before; on a phone it would hide the chat.
const settingsOpen = localStorage.getItem("settingsOpen");
showSettings(settingsOpen === null ? window.innerWidth > PHONE_WIDTH : settingsOpen === "true");
connect();
