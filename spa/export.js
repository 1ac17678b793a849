// A saved conversation as files a person keeps: Markdown to read, JSON as the API returns it.

const ROLE_HEADINGS = { system: "System prompt", user: "User", assistant: "Assistant" };

/** The session (with its messages, as GET /v1/sessions/{id} gives it) as a Markdown document;
 * answers whose turn is in `partialTurns` are marked as cut short. */
export function conversationMarkdown(session, partialTurns) {
  const parts = [`# ${session.title || "Untitled chat"}`];
  for (const message of session.messages) {
    const heading = ROLE_HEADINGS[message.role] ?? message.role;
    const partial = message.role === "assistant" && partialTurns.has(message.turn) ? " (partial)" : "";
    parts.push(`## ${heading}${partial}`, message.content);
  }
  return `${parts.join("\n\n")}\n`;
}

/** Offers `text` to the person as a file named `filename`. */
export function download(filename, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = Object.assign(document.createElement("a"), { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** A file name from a chat's title: letters, digits and dashes. */
export function fileName(session, extension) {
  const stem = (session.title || "chat").normalize("NFKD").replace(/[\u0300-\u036f]/g, "").replace(/[^\w-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 60);
  return `${stem || "chat"}.${extension}`;
}
