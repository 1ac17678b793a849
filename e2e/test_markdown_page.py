"""spa/markdown.js on a fixed corpus: renderMarkdown(source), called in the browser, gives the
expected DOM structure for lists, tables, quotes, code, math and hostile HTML; and a saved answer
holding a table, an ordered list, highlighted code and a formula renders so when reopened."""

from __future__ import annotations

import uuid

import httpx
import pytest
from playwright.sync_api import expect

from e2e.chat_page import open_chat_page, session_named

# The rendered HTML as a tree: [tag, {kept attributes}, children], text trimmed, empty text
# dropped. Attributes are those that carry meaning here; KaTeX and highlight.js markup is
# compared by the tests that need it.
STRUCTURE = """
async (source) => {
  const { renderMarkdown } = await import("/markdown.js");
  const kept = ["align", "class", "href", "start", "type", "checked", "disabled", "target", "rel"];
  const tree = (node) => {
    if (node.nodeType === Node.TEXT_NODE) return node.textContent.trim() || null;
    const attributes = Object.fromEntries(kept.filter((name) => node.hasAttribute(name)).map((name) => [name, node.getAttribute(name)]));
    return [node.localName, attributes, [...node.childNodes].map(tree).filter((child) => child !== null)];
  };
  const holder = document.createElement("div");
  holder.innerHTML = renderMarkdown(source);
  return [...holder.childNodes].map(tree).filter((child) => child !== null);
}
"""
# What a rendered source does once in the page: its elements, and whether anything ran.
IN_THE_PAGE = """
async (source) => {
  const { renderMarkdown } = await import("/markdown.js");
  const holder = document.createElement("div");
  document.body.append(holder);
  holder.innerHTML = renderMarkdown(source);
  await new Promise((resolve) => setTimeout(resolve, 300));  // an onerror or onload would have fired
  const handlers = [...holder.querySelectorAll("*")].flatMap((element) => element.getAttributeNames().filter((name) => name.startsWith("on")));
  const links = [...holder.querySelectorAll("a")].map((link) => link.getAttribute("href"));
  const result = { text: holder.textContent, tags: [...new Set([...holder.querySelectorAll("*")].map((element) => element.localName))].sort(),
                   handlers, links, ran: window.__xss ?? null };
  holder.remove();
  return result;
}
"""


@pytest.fixture(scope="module")
def markdown_page(browser, spa_server):
    """The chat page's own origin (module scripts load from it), with no API behind it."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{spa_server.url}/?api=http://127.0.0.1:9")
    yield page
    context.close()


def structure(page, source: str) -> list:
    return page.evaluate(STRUCTURE, source)


def code_block(language: str, code: list) -> list:
    label = language or "text"
    code_class = f"hljs language-{language}" if language else "hljs"
    return ["div", {"class": "code-block"}, [
        ["div", {"class": "code-header"}, [
            ["span", {"class": "code-language"}, [label]],
            ["button", {"class": "code-copy", "type": "button"}, ["Copy"]],
        ]],
        ["pre", {}, [["code", {"class": code_class}, code]]],
    ]]


def test_an_ordered_list_with_blank_lines_between_items_is_one_list_numbered_1_2_3(markdown_page):
    rendered = structure(markdown_page, "1. one\n\n2. two\n\n3. three")

    assert rendered == [["ol", {}, [["li", {}, [["p", {}, [word]]]] for word in ("one", "two", "three")]]]


def test_a_list_that_starts_at_4_keeps_its_number(markdown_page):
    assert structure(markdown_page, "4. four\n5. five") == [["ol", {"start": "4"}, [["li", {}, ["four"]], ["li", {}, ["five"]]]]]


def test_nested_lists_stay_nested(markdown_page):
    rendered = structure(markdown_page, "- fruit\n  - apple\n    1. green\n    2. red\n- vegetable")

    assert rendered == [["ul", {}, [
        ["li", {}, ["fruit", ["ul", {}, [
            ["li", {}, ["apple", ["ol", {}, [["li", {}, ["green"]], ["li", {}, ["red"]]]]]],
        ]]]],
        ["li", {}, ["vegetable"]],
    ]]]


def test_a_table_with_alignment(markdown_page):
    rendered = structure(markdown_page, "| name | count |\n|:-----|------:|\n| apples | 3 |\n| pears | 12 |")

    assert rendered == [["table", {}, [
        ["thead", {}, [["tr", {}, [["th", {"align": "left"}, ["name"]], ["th", {"align": "right"}, ["count"]]]]]],
        ["tbody", {}, [
            ["tr", {}, [["td", {"align": "left"}, ["apples"]], ["td", {"align": "right"}, ["3"]]]],
            ["tr", {}, [["td", {"align": "left"}, ["pears"]], ["td", {"align": "right"}, ["12"]]]],
        ]],
    ]]]


def test_a_task_list_shows_disabled_checkboxes(markdown_page):
    rendered = structure(markdown_page, "- [x] done\n- [ ] to do")

    checkbox = {"type": "checkbox", "disabled": ""}
    assert rendered == [["ul", {}, [
        ["li", {}, [["input", {**checkbox, "checked": ""}, []], "done"]],
        ["li", {}, [["input", checkbox, []], "to do"]],
    ]]]


def test_a_quote_with_emphasis_and_a_line_break(markdown_page):
    rendered = structure(markdown_page, "> quoted **bold**\n> next line")

    assert rendered == [["blockquote", {}, [["p", {}, ["quoted", ["strong", {}, ["bold"]], ["br", {}, []], "next line"]]]]]


def test_a_fenced_block_is_highlighted_with_its_language_and_a_copy_button(markdown_page):
    rendered = structure(markdown_page, "```python\nprint('hi')\n```")

    assert rendered == [code_block("python", [
        ["span", {"class": "hljs-built_in"}, ["print"]], "(", ["span", {"class": "hljs-string"}, ["'hi'"]], ")",
    ])]


def test_an_indented_block_is_code_without_a_language(markdown_page):
    assert structure(markdown_page, "Before:\n\n    x = 1\n    y = 2") == [["p", {}, ["Before:"]], code_block("", ["x = 1\ny = 2"])]


def test_an_unclosed_fence_mid_stream_is_code_to_the_end(markdown_page):
    assert structure(markdown_page, "```js\nlet a") == [code_block("js", [["span", {"class": "hljs-keyword"}, ["let"]], "a"])]


def test_a_heading_in_an_answer_sits_below_the_pages_headings(markdown_page):
    assert structure(markdown_page, "# Title\n## Part") == [["h3", {}, ["Title"]], ["h4", {}, ["Part"]]]


def test_links_open_in_a_new_tab_and_bare_addresses_become_links(markdown_page):
    rendered = structure(markdown_page, "[docs](https://example.org/docs) and https://example.com")

    link = {"target": "_blank", "rel": "noopener noreferrer"}
    assert rendered == [["p", {}, [
        ["a", {"href": "https://example.org/docs", **link}, ["docs"]], "and",
        ["a", {"href": "https://example.com", **link}, ["https://example.com"]],
    ]]]


MATH = """
async (source) => {
  const { renderMarkdown } = await import("/markdown.js");
  const holder = document.createElement("div");
  holder.innerHTML = renderMarkdown(source);
  return [...holder.querySelectorAll(".katex")].map((formula) => ({
    display: formula.parentElement.classList.contains("katex-display"),
    tex: formula.querySelector("annotation[encoding='application/x-tex']")?.textContent,
    mathml: formula.querySelector("math") !== null,
    drawn: formula.querySelector(".katex-html") !== null,
  }));
}
"""


def test_dollar_math_inline_and_display_is_typeset_by_katex(markdown_page):
    formulas = markdown_page.evaluate(MATH, "Euler: $e^{i\\pi} + 1 = 0$.\n\n$$\n\\int_0^1 x^2\\,dx = \\frac{1}{3}\n$$")

    assert formulas == [
        {"display": False, "tex": "e^{i\\pi} + 1 = 0", "mathml": True, "drawn": True},
        {"display": True, "tex": "\\int_0^1 x^2\\,dx = \\frac{1}{3}", "mathml": True, "drawn": True},
    ]


def test_prices_in_dollars_stay_text(markdown_page):
    assert structure(markdown_page, "It costs $5 and $10 today.") == [["p", {}, ["It costs $5 and $10 today."]]]


HOSTILE = (
    "<script>window.__xss = 1</script>\n\n"
    "Inline <img src=x onerror=\"window.__xss = 2\"> and <svg onload=\"window.__xss = 3\"></svg>\n\n"
    "<iframe src=\"javascript:window.__xss = 4\"></iframe>\n\n"
    "[click](javascript:window.__xss=5) [data](data:text/html,<script>x</script>) ![pixel](https://tracker.example/p.png)\n\n"
    "<a href=\"javascript:window.__xss = 6\">raw link</a> <style>body { display: none }</style>\n\n"
    "$\\href{javascript:window.__xss = 7}{x}$"
)


def test_hostile_html_is_shown_as_text_and_nothing_runs(markdown_page):
    result = markdown_page.evaluate(IN_THE_PAGE, HOSTILE)

    # Only the image becomes a link (to where it points, never fetched); raw HTML is text.
    assert (result["ran"], result["handlers"], result["links"]) == (None, [], ["https://tracker.example/p.png"])
    assert not {"script", "img", "svg", "iframe", "style"} & set(result["tags"])
    assert '<img src=x onerror="window.__xss = 2">' in result["text"] and "<script>window.__xss = 1</script>" in result["text"]


def test_a_saved_answer_with_a_table_a_list_code_and_a_formula_renders_when_reopened(page, service, spa_server):
    title = f"rich answer {uuid.uuid4().hex[:6]}"
    session_id = httpx.post(f"{service.url}/v1/sessions", json={"title": title}, timeout=30).json()["id"]
    answer = (
        "Steps:\n\n1. Measure\n\n2. Cut\n\n3. Sand\n\n| tool | use |\n|---|---|\n| saw | cut |\n\n"
        "```python\nfor step in steps:\n    print(step)\n```\n\nArea: $A = \\pi r^2$"
    )
    # A turn stored as the page stores a stopped answer: no model can be made to write this.
    response = httpx.post(f"{service.url}/v1/sessions/{session_id}/turns", timeout=30, json={
        "messages": [{"role": "user", "content": "How?"}, {"role": "assistant", "content": answer}],
    })
    assert response.status_code == 201, response.text
    open_chat_page(page, service, spa_server)

    session_named(page, title).get_by_test_id("session-open").click()

    shown = page.get_by_test_id("message-assistant").locator(".content")
    expect(shown.locator("ol > li")).to_have_text(["Measure", "Cut", "Sand"])
    expect(shown.locator("table td")).to_have_text(["saw", "cut"])
    expect(shown.locator("pre code.language-python .hljs-keyword").first).to_have_text("for")
    expect(shown.locator(".code-language")).to_have_text("python")
    expect(shown.locator(".katex annotation")).to_have_text("A = \\pi r^2")
    # KaTeX's fonts came from spa/vendor/ (a static host serves them as they are).
    assert page.evaluate("() => document.fonts.check('16px KaTeX_Main')")


def test_a_code_blocks_copy_button_copies_its_code(clipboard_page, service, spa_server):
    page = clipboard_page
    title = f"code answer {uuid.uuid4().hex[:6]}"
    session_id = httpx.post(f"{service.url}/v1/sessions", json={"title": title}, timeout=30).json()["id"]
    httpx.post(f"{service.url}/v1/sessions/{session_id}/turns", timeout=30, json={
        "messages": [{"role": "user", "content": "Code?"},
                     {"role": "assistant", "content": "First:\n\n```sh\necho one\n```\n\nSecond:\n\n```js\nlet two = 2;\n```"}],
    }).raise_for_status()
    open_chat_page(page, service, spa_server)
    session_named(page, title).get_by_test_id("session-open").click()

    page.get_by_test_id("code-copy").nth(1).click()

    expect(page.get_by_test_id("code-copy").nth(1)).to_have_text("Copied")
    assert page.evaluate("() => navigator.clipboard.readText()") == "let two = 2;"


def test_a_tool_call_shows_as_a_collapsed_block_with_its_arguments(markdown_page):
    source = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'

    rendered = structure(markdown_page, source)

    assert rendered[0] == ["p", {}, ["Let me check."]]
    details = rendered[1]
    assert details[0] == "details" and details[1] == {"class": "tool-call"}
    assert details[2][0] == ["summary", {}, ["Tool call:", ["code", {}, ["get_weather"]]]]
    block = details[2][1]
    assert block[1] == {"class": "code-block"} and "'\"city\"'" in str(block) and "'\"Paris\"'" in str(block)


def test_an_answer_that_is_json_shows_as_indented_json(markdown_page):
    rendered = markdown_page.evaluate(
        """async (source) => { const { renderMarkdown } = await import("/markdown.js");
           const holder = document.createElement("div"); holder.innerHTML = renderMarkdown(source);
           return [holder.querySelector(".code-language")?.textContent, holder.querySelector("code")?.textContent]; }""",
        '{"name": "Ada", "tags": ["a", "b"]}',
    )

    assert rendered == ["json", '{\n  "name": "Ada",\n  "tags": [\n    "a",\n    "b"\n  ]\n}']
