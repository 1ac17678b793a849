// The chat page: settings, model picker, conversation, and answers that grow as tokens stream.
import { listModels, streamChat } from "./api.js";

const elements = {
  baseUrl: document.getElementById("base-url"),
  model: document.getElementById("model-select"),
  messages: document.getElementById("messages"),
  composer: document.getElementById("composer"),
  prompt: document.getElementById("prompt"),
  send: document.getElementById("send"),
  stop: document.getElementById("stop"),
  banner: document.getElementById("error-banner"),
};
const conversation = [];
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

function showError(message) {
  elements.banner.textContent = message;
  elements.banner.hidden = !message;
}

async function loadModels() {
  showError("");
  elements.model.replaceChildren();
  try {
    const models = await listModels(baseUrl());
    for (const model of models) {
      const option = new Option(model.status === "ready" ? model.id : `${model.id} (${model.status})`, model.id);
      option.disabled = model.status !== "ready";
      elements.model.append(option);
    }
    if (!models.length) showError("The server has no models.");
  } catch (error) {
    showError(`Cannot reach the API at ${baseUrl()}: ${error.message}`);
  }
}

function addMessage(role, text) {
  const element = document.createElement("div");
  element.className = `message ${role}`;
  element.dataset.testid = `message-${role}`;
  element.textContent = text;  // never innerHTML: model output must not become markup
  elements.messages.append(element);
  element.scrollIntoView({ block: "end" });
  return element;
}

function setRunning(controller) {
  running = controller;
  elements.send.disabled = Boolean(controller);
  elements.stop.hidden = !controller;
}

async function send(text) {
  showError("");
  conversation.push({ role: "user", content: text });
  addMessage("user", text);
  const answer = addMessage("assistant", "");
  const body = document.createTextNode("");
  answer.replaceChildren(body);
  answer.classList.add("streaming");
  const controller = new AbortController();
  setRunning(controller);
  const started = performance.now();
  let firstTokenAt = null;
  let usage = null;
  try {
    for await (const chunk of streamChat(baseUrl(), { model: elements.model.value, messages: conversation }, controller.signal)) {
      if (chunk.usage) usage = chunk.usage;
      const piece = chunk.choices?.[0]?.delta?.content;
      if (piece) {
        firstTokenAt ??= performance.now();
        body.appendData(piece);
        answer.scrollIntoView({ block: "end" });
      }
    }
    conversation.push({ role: "assistant", content: body.data });
    answer.append(statsLine(started, firstTokenAt, usage));
  } catch (error) {
    if (error.name !== "AbortError") showError(error.message);
    conversation.pop();
  } finally {
    answer.classList.remove("streaming");
    setRunning(null);
  }
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
elements.baseUrl.addEventListener("change", () => {
  localStorage.setItem("apiBaseUrl", baseUrl());
  loadModels();
});

elements.baseUrl.value = initialBaseUrl();
loadModels();
