// The sidebar's saved chats: all of them, or those whose messages hold the words in the search
// box (hits highlighted in a snippet); renaming in place; deleting with a few seconds to undo.

const UNDO_MS = 6000;  // how long a deleted chat can be brought back before the server deletes it
const SEARCH_DELAY_MS = 250;

export class ChatList {
  /**
   * `elements`: list, search, undoBar, undoText, undoButton. `page`: what the list needs from the
   * page: client() (an ApiClient), currentId(), open(id), closeCurrent() (the open chat was
   * deleted) and report(error).
   */
  constructor(elements, page) {
    this.elements = elements;
    this.page = page;
    this.pendingDeletion = null;  // { id, wasOpen, timer }: gone from the list, not yet from the server
    this.searchTimer = null;
    elements.search.addEventListener("input", () => {
      clearTimeout(this.searchTimer);
      this.searchTimer = setTimeout(() => this.refresh(), SEARCH_DELAY_MS);
    });
    elements.undoButton.addEventListener("click", () => this.undoDeletion());
    // A deletion still due when the page closes is sent then.
    window.addEventListener("pagehide", () => this.finishDeletion({ keepalive: true }));
  }

  /** Lists the chats again (the search's matches while it holds words); failures are reported. */
  async refresh() {
    const query = this.elements.search.value.trim();
    let sessions;
    try {
      sessions = await this.page.client().listSessions(query);
    } catch (error) {
      this.page.report(error);
      return;
    }
    if (query !== this.elements.search.value.trim()) return;  // a newer search is on its way
    const shown = sessions.filter((session) => session.id !== this.pendingDeletion?.id);
    this.elements.list.replaceChildren(...shown.map((session) => this.item(session)));
  }

  focusSearch() {
    this.elements.search.focus();
    this.elements.search.select();
  }

  item(session) {
    const title = session.title || "Untitled chat";
    const current = session.id === this.page.currentId();
    const item = document.createElement("li");
    item.dataset.testid = "session-item";
    item.dataset.sessionId = session.id;
    item.classList.toggle("current", current);
    if (current) item.setAttribute("aria-current", "true");
    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    open.dataset.testid = "session-open";
    open.title = session.title || "";
    const name = document.createElement("span");
    name.className = "title";
    name.textContent = title;
    open.append(name);
    if (session.snippet) open.append(snippetElement(session.snippet));
    open.addEventListener("click", () => this.page.open(session.id));
    const rename = itemButton("✎", "session-rename", `Rename chat ${title}`);
    rename.addEventListener("click", () => this.startRename(item, session));
    const remove = itemButton("✕", "session-delete", `Delete chat ${title}`);
    remove.addEventListener("click", () => this.delete(session));
    item.append(open, rename, remove);
    return item;
  }

  // The title becomes a field: Enter keeps the new name, Escape (or leaving it) keeps the old.
  startRename(item, session) {
    const input = document.createElement("input");
    input.className = "rename";
    input.dataset.testid = "session-rename-input";
    input.value = session.title || "";
    input.setAttribute("aria-label", "New name for this chat");
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      const title = input.value.trim();
      try {
        if (save && title && title !== session.title) await this.page.client().updateSession(session.id, { title });
      } catch (error) {
        this.page.report(error);
      }
      await this.refresh();
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") finish(true);
      if (event.key === "Escape") {
        event.stopPropagation();  // leaves the field, not the answer being written
        finish(false);
      }
    });
    input.addEventListener("blur", () => finish(false));
    item.querySelector(".open").replaceWith(input);
    input.focus();
    input.select();
  }

  // A deleted chat leaves the list at once but the server only after UNDO_MS, so Undo can
  // bring it back.
  async delete(session) {
    await this.finishDeletion();
    const wasOpen = session.id === this.page.currentId();
    this.pendingDeletion = { id: session.id, wasOpen, timer: setTimeout(() => this.finishDeletion(), UNDO_MS) };
    if (wasOpen) this.page.closeCurrent();
    this.elements.undoText.textContent = `Deleted "${session.title || "Untitled chat"}".`;
    this.elements.undoBar.hidden = false;
    this.elements.list.querySelector(`[data-session-id="${CSS.escape(session.id)}"]`)?.remove();
  }

  async finishDeletion({ keepalive = false } = {}) {
    if (!this.pendingDeletion) return;
    const { id } = this.takePendingDeletion();
    try {
      await this.page.client().deleteSession(id, { keepalive });
    } catch (error) {
      this.page.report(error);
    }
    if (!keepalive) await this.refresh();
  }

  async undoDeletion() {
    if (!this.pendingDeletion) return;
    const { id, wasOpen } = this.takePendingDeletion();
    if (wasOpen) await this.page.open(id);
    else await this.refresh();
  }

  takePendingDeletion() {
    const pending = this.pendingDeletion;
    clearTimeout(pending.timer);
    this.pendingDeletion = null;
    this.elements.undoBar.hidden = true;
    return pending;
  }
}

function itemButton(text, testId, label) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "session-action";
  button.dataset.testid = testId;
  button.textContent = text;
  button.setAttribute("aria-label", label);
  return button;
}

// The server wraps each hit in **; they become <mark>s, the rest stays text.
function snippetElement(snippet) {
  const element = document.createElement("span");
  element.className = "snippet";
  element.dataset.testid = "session-snippet";
  snippet.split("**").forEach((part, index) => {
    if (index % 2) element.append(Object.assign(document.createElement("mark"), { textContent: part }));
    else element.append(part);
  });
  return element;
}
