// Model answers as Markdown: CommonMark and GFM (tables, task lists, autolinks) by marked, code
// highlighted by highlight.js, $...$ and $$...$$ by KaTeX, and the HTML sanitized by DOMPurify.
// Model text never becomes markup of its own: raw HTML in an answer is shown as text, links go
// only to http(s) and mailto addresses, and images are links (a model must not make the page
// fetch an address). DOMPurify then checks the whole result, whatever the libraries produced.
import { Marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.js";
import hljs from "./vendor/highlight.min.js";
import katex from "./vendor/katex.js";

const SAFE_LINK = /^(https?:|mailto:)/i;
// Dollar math as pandoc reads it: no space inside the dollars and no digit after the closing
// one, so "costs $5 and $10" stays text.
const INLINE_MATH = /^\$(?!\s)((?:\\\$|[^$\n])+?)(?<![\s\\])\$(?!\d)/;
const BLOCK_MATH = /^ {0,3}\$\$([\s\S]+?)\$\$[ \t]*(?:\n|$)/;

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (character) => `&#${character.charCodeAt(0)};`);
}

function math(tex, displayMode) {
  return katex.renderToString(tex.trim(), { displayMode, throwOnError: false, output: "htmlAndMathml" });
}

const mathExtensions = [
  {
    name: "blockMath",
    level: "block",
    start: (source) => source.match(/^ {0,3}\$\$/m)?.index,
    tokenizer(source) {
      const match = BLOCK_MATH.exec(source);
      if (match) return { type: "blockMath", raw: match[0], tex: match[1] };
    },
    renderer: (token) => `<div class="math-display">${math(token.tex, true)}</div>`,
  },
  {
    name: "inlineMath",
    level: "inline",
    start: (source) => source.indexOf("$") >= 0 ? source.indexOf("$") : undefined,
    tokenizer(source) {
      const display = /^\$\$([^$]+?)\$\$/.exec(source);
      if (display) return { type: "inlineMath", raw: display[0], tex: display[1], display: true };
      const match = INLINE_MATH.exec(source);
      if (match) return { type: "inlineMath", raw: match[0], tex: match[1], display: false };
    },
    renderer: (token) => math(token.tex, token.display),
  },
];

// A code block: its language (highlighted when highlight.js knows it) and a Copy button, which
// the page wires up (sanitized HTML carries no handlers).
function codeBlock({ text, lang }) {
  const language = /^[\w+#.-]+/.exec(lang ?? "")?.[0] ?? "";
  const known = language && hljs.getLanguage(language);
  const body = known ? hljs.highlight(text, { language, ignoreIllegals: true }).value : escapeHtml(text);
  const codeClass = language ? `hljs language-${language}` : "hljs";
  return `<div class="code-block"><div class="code-header"><span class="code-language">${escapeHtml(language || "text")}</span>`
    + '<button type="button" class="code-copy" data-testid="code-copy" aria-label="Copy code">Copy</button></div>'
    + `<pre><code class="${codeClass}">${body}</code></pre></div>`;
}

const renderer = {
  code: codeBlock,
  html: ({ text, block }) => (block ? `<p>${escapeHtml(text)}</p>` : escapeHtml(text)),
  // Answers sit under the page's own headings: # in an answer is a third-level heading.
  heading({ tokens, depth }) {
    const level = Math.min(depth + 2, 6);
    return `<h${level}>${this.parser.parseInline(tokens)}</h${level}>`;
  },
  link({ href, tokens }) {
    const label = this.parser.parseInline(tokens);
    if (!SAFE_LINK.test(href)) return label;
    return `<a href="${escapeHtml(href)}" target="_blank" rel="noopener noreferrer">${label}</a>`;
  },
  image({ href, text }) {
    if (!SAFE_LINK.test(href)) return escapeHtml(text);
    return `<a href="${escapeHtml(href)}" target="_blank" rel="noopener noreferrer">${escapeHtml(text || href)}</a>`;
  },
};

// Links open in a new tab; KaTeX's MathML keeps the TeX source it was made from, as screen
// readers and copying use it.
const SANITIZE = { ADD_TAGS: ["semantics", "annotation"], ADD_ATTR: ["target", "encoding"] };

// A single newline in an answer is a line break, as chat models mean it.
const markdown = new Marked({ gfm: true, breaks: true }).use({ renderer, extensions: mathExtensions });

// Tool calls as the service writes them in an answer (`<tool_call>` JSON blocks, docs/api.md)
// show as one collapsed block per call, and an answer that is one JSON value as indented JSON.
const TOOL_CALL = /<tool_call>\s*([\s\S]*?)\s*<\/tool_call>/g;

function toolCallBlock(body) {
  let name = "tool";
  let text = body;
  try {
    const call = JSON.parse(body);
    name = String(call.name ?? name);
    text = JSON.stringify(call.arguments ?? {}, null, 2);
  } catch { /* not JSON: shown as it is */ }
  return `<details class="tool-call"><summary>Tool call: <code>${escapeHtml(name)}</code></summary>`
    + `${codeBlock({ text, lang: "json" })}</details>`;
}

function jsonAnswer(source) {
  const trimmed = source.trim();
  if (!/^[[{][\s\S]*[\]}]$/.test(trimmed)) return null;
  try {
    return codeBlock({ text: JSON.stringify(JSON.parse(trimmed), null, 2), lang: "json" });
  } catch {
    return null;
  }
}

/** `source` rendered as sanitized HTML; an unclosed code fence (mid-stream) is code to the end. */
export function renderMarkdown(source) {
  const json = jsonAnswer(source);
  if (json !== null) return DOMPurify.sanitize(json, SANITIZE);
  const parts = [];
  let last = 0;
  for (const match of source.matchAll(TOOL_CALL)) {
    parts.push(markdown.parse(source.slice(last, match.index)), toolCallBlock(match[1]));
    last = match.index + match[0].length;
  }
  parts.push(markdown.parse(source.slice(last)));
  return DOMPurify.sanitize(parts.join(""), { ...SANITIZE, ADD_TAGS: [...SANITIZE.ADD_TAGS, "details", "summary"] });
}
