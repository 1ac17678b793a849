// A small Markdown renderer for model answers, built only from DOM nodes and textContent: model
// output can never become markup or script. It covers what chat answers use: paragraphs,
// headings, lists, fenced code blocks (an unclosed fence while streaming is code until the end),
// inline code, bold, italics and http(s) links.

const FENCE = /^\s*(```|~~~)\s*([\w+-]*)\s*$/;
const HEADING = /^(#{1,6})\s+(.*)$/;
const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*\d+[.)]\s+(.*)$/;
// Emphasis markers count only at word edges, as in CommonMark: snake_case and __dunder__ stay text.
const INLINE = /(`[^`]+`)|(\*\*[^*]+\*\*)|((?<![\w*])\*[^*\s][^*]*\*(?![\w*]))|((?<![\w_])_[^_\s][^_]*_(?![\w_]))|(\[[^\]]+\]\([^)\s]+\))/;

function inline(parent, text) {
  let rest = text;
  while (rest) {
    const match = INLINE.exec(rest);
    if (!match) {
      parent.append(document.createTextNode(rest));
      return;
    }
    if (match.index) parent.append(document.createTextNode(rest.slice(0, match.index)));
    const token = match[0];
    if (match[1]) {
      const code = document.createElement("code");
      code.textContent = token.slice(1, -1);
      parent.append(code);
    } else if (match[2]) {
      const strong = document.createElement("strong");
      inline(strong, token.slice(2, -2));
      parent.append(strong);
    } else if (match[3] || match[4]) {
      const emphasis = document.createElement("em");
      inline(emphasis, token.slice(1, -1));
      parent.append(emphasis);
    } else {
      const [, label, href] = /^\[([^\]]+)\]\(([^)\s]+)\)$/.exec(token);
      if (/^https?:\/\//i.test(href)) {
        const link = document.createElement("a");
        link.href = href;  // only http(s): never javascript: or data:
        link.rel = "noopener noreferrer";
        link.target = "_blank";
        link.textContent = label;
        parent.append(link);
      } else {
        parent.append(document.createTextNode(token));
      }
    }
    rest = rest.slice(match.index + token.length);
  }
}

/** Replaces the children of `container` with `text` rendered as Markdown. */
export function renderMarkdown(container, text) {
  const blocks = [];
  const lines = text.split("\n");
  let paragraph = null;
  let list = null;
  const closeParagraph = () => { paragraph = null; };
  const closeList = () => { list = null; };
  for (let index = 0; index < lines.length; index += 1) {
    const line = lines[index];
    const fence = FENCE.exec(line);
    if (fence) {
      closeParagraph();
      closeList();
      const pre = document.createElement("pre");
      const code = document.createElement("code");
      if (fence[2]) code.className = `language-${fence[2]}`;
      const body = [];
      for (index += 1; index < lines.length && !FENCE.test(lines[index]); index += 1) body.push(lines[index]);
      code.textContent = body.join("\n");
      pre.append(code);
      blocks.push(pre);
      continue;
    }
    if (!line.trim()) {
      closeParagraph();
      closeList();
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      closeParagraph();
      closeList();
      const element = document.createElement(`h${Math.min(heading[1].length + 2, 6)}`);
      inline(element, heading[2]);
      blocks.push(element);
      continue;
    }
    const bullet = BULLET.exec(line);
    const numbered = bullet ? null : NUMBERED.exec(line);
    if (bullet || numbered) {
      closeParagraph();
      const kind = bullet ? "ul" : "ol";
      if (!list || list.tagName.toLowerCase() !== kind) {
        list = document.createElement(kind);
        blocks.push(list);
      }
      const item = document.createElement("li");
      inline(item, (bullet || numbered)[1]);
      list.append(item);
      continue;
    }
    closeList();
    if (!paragraph) {
      paragraph = document.createElement("p");
      blocks.push(paragraph);
    } else {
      paragraph.append(document.createElement("br"));
    }
    inline(paragraph, line);
  }
  container.replaceChildren(...blocks);
}
