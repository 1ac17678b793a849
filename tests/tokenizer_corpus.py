"""Fixed strings a rebuilt tokenizer must split exactly as the reference implementation does.

Grouped by what tends to break tokenizers: whitespace handling, byte fallback, special-token
look-alikes, scripts without spaces, digit runs. A few groups are generated from short lists so
that every member of a family (each ASCII control character, each run length) is covered.
"""

from __future__ import annotations

PLAIN_ENGLISH = [
    "Hello world",
    "hello",
    "Hello",
    "HELLO WORLD",
    "The quick brown fox jumps over the lazy dog.",
    "Machine learning is a field of study in artificial intelligence.",
    "don't won't I'm we'll they've she'd you're",
    "It's the cat's toy, isn't it?",
    "Mr. Smith went to Washington, D.C., on Jan. 5th.",
    "a",
    "I",
    "antidisestablishmentarianism",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "Supercalifragilisticexpialidocious!",
    "camelCaseIdentifierNamesAreCommon",
    "snake_case_identifier_names_too",
    "ALLCAPSWORDSWITHOUTSPACES",
    "Once upon a time, in a land far, far away, there lived a king.",
    "e.g. i.e. etc. vs. a.k.a.",
    "O'Neill and D'Angelo",
]

PUNCTUATION = [
    "!!!",
    "?!?!",
    "...",
    "…",
    "—– -- ---",
    "\"quoted\" 'single' «guillemets» „German“ 「Japanese」",
    "(parentheses) [brackets] {braces} <angles>",
    "@#$%^&*()_+-=~`|\\/",
    "a,b;c:d.e",
    "end.",
    "Wait... what?!",
    "********************",
    "====================",
    "--------------------------------------------------",
    "#######",
]

NUMBERS = [
    "0",
    "7",
    "42",
    "123",
    "1234",
    "12345",
    "1234567890",
    "3.14159265358979323846",
    "-273.15",
    "1,000,000",
    "1e-10",
    "0x1F 0b1010 0o777",
    "2024-01-15T10:30:00Z",
    "+1 (555) 123-4567",
    "$1,234.56 €99 ¥1000 £5",
    "100%",
    "v1.2.3-beta.4",
    "000000000000",
    "9999999999999999999999",
    "numbers 1234567890 and 3.14159",
]

ACCENTS = [
    "Àccénts: naïve café façade Zürich",
    "résumé",
    "Ångström",
    "São Paulo",
    "Øresund Æsir ß straße",
    "Crème brûlée",
    "Dvořák Łódź",
    "e\u0301",  # e + combining acute, not precomposed
    "Ça va? Très bien.",
    "ﬁ ligature ﬂ",
]

EMOJI = [
    "😀",
    "emoji 😀🎉👍🏽 and flags 🇫🇷",
    "👨‍👩‍👧‍👦",
    "👩🏽‍💻",
    "🏳️‍🌈",
    "🇯🇵🇺🇸🇩🇪",
    "❤️",
    "I ❤️ NY",
    "🙂🙂🙂🙂🙂",
    "🧑‍🤝‍🧑",
]

SCRIPTS = [
    "中文字符测试，日本語のテキスト、한국어",
    "你好世界",
    "人工智能是计算机科学的一个分支。",
    "東京都は日本の首都です。",
    "ひらがなとカタカナ",
    "ｶﾀｶﾅ 半角",
    "안녕하세요 세계",
    "مرحبا بالعالم",
    "العربية: اللغة الرسمية",
    "שלום עולם",
    "עברית עם ניקוד: שָׁלוֹם",
    "Привет, мир!",
    "Съешь же ещё этих мягких французских булок.",
    "नमस्ते दुनिया",
    "हिन्दी भाषा",
    "สวัสดีชาวโลก",
    "ภาษาไทยไม่มีช่องว่างระหว่างคำ",
    "Γειά σου Κόσμε",
    "Բարեւ աշխարհ",
    "გამარჯობა",
    "ሰላም ልዑል",
    "mixed English 中文 русский العربية",
]

CODE = [
    "def f(x):\n    return x ** 2  # square\n",
    "import numpy as np\nprint(np.arange(10).sum())",
    "class Foo:\n    def __init__(self):\n        self.bar = None\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    "#include <stdio.h>\nint main(void) { printf(\"hi\\n\"); return 0; }",
    "fn main() {\n    let v: Vec<u8> = vec![1, 2, 3];\n    println!(\"{:?}\", v);\n}",
    "const add = (a, b) => a + b;\nconsole.log(add(1, 2));",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
    "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hello\") }",
    "#!/bin/bash\nset -euo pipefail\necho \"$HOME\" | grep -c root",
    "<div class=\"x\"><span>text</span></div>",
    "<table><tr><td>1</td></tr></table>",
    "x = [i**2 for i in range(10) if i % 2 == 0]",
    "if (a && b || !c) { return a != b; }",
    "public static void main(String[] args) {}",
    "    indented four\n        indented eight",
    "\t\tdouble tab indented",
]

WHITESPACE = [
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    "line one\r\nline two\r\n",
    "  leading and trailing spaces  ",
    " leading",
    "trailing ",
    "tabs\tand\nnew\n\nlines",
    "a  b   c    d",
    "\n\n\n\nfour newlines",
    "mixed \t \n \r\n whitespace",
    "trailing newline\n",
    " \n ",
    "\u00a0non-breaking\u00a0space",
    "ideographic\u3000space",
    "zero\u200bwidth\u200bspace",
    "\x0bvertical tab\x0cform feed",
]

SPECIAL_TOKEN_LOOKALIKES = [
    "<|im_start|>user\nHi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "<|im_",
    "im_start|>",
    "<|im_start|",
    "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>",
    "<start_of_tur",
    "<bos>",
    "<bos>text after bos",
    "<eos>",
    "<pad><pad>",
    "<unk>",
    "<mask>",
    "<s>",
    "</s>",
    "<s>[INST] question [/INST] answer</s>",
    "[INST]",
    "<0x0A>",
    "<0x00><0xFF>",
    "<0xZZ>",
    "<unused0>",
    "<start_of_image>",
    "< bos >",
    "<<bos>>",
    "<|",
    "|>",
    "▁",
    "▁▁",
    "▁hello▁world",
]

BYTE_FALLBACK = [
    "\x00",
    "\x07",
    "nul\x00inside",
    "bell\x07and\x1bescape",
    "\x7f",
    "\u0301",  # a lone combining mark
    "\u0300\u0301\u0302",
    "\ue000\uf8ff",  # private use area
    "\U000f0000",  # supplementary private use
    "\U0001d4d0\U0001d4d1",  # mathematical script letters
    "𓀀𓀁𓀂",  # Egyptian hieroglyphs
    "\ufeffbyte order mark",
    "\ufffd replacement character",
    "\u2028line separator\u2029paragraph",
    "\U0001f9ec\U0001fae0",  # recent emoji
    "ꙮ",
    "\u202eright-to-left override",
    "Ⅻ ℵ ℏ ℞",
]

LONG = [
    "a" * 200,
    "ab" * 150,
    "x" * 1000,
    " " * 64,
    "\n" * 40,
    "\t" * 40,
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 8,
    "verylongwordwithoutanyspaces" * 10,
    "https://example.com/" + "segment/" * 30,
]

STRUCTURED = [
    "URL https://example.com/path?q=1&r=2",
    "https://www.example.org/a/b/c.html#fragment",
    "mailto:someone@example.com",
    "ftp://files.example.net/pub/file.tar.gz",
    '{"json": [1, 2, {"k": null}]}',
    '{\n  "name": "test",\n  "values": [true, false, 1.5e3]\n}',
    "# Heading\n\n## Subheading\n\n- item one\n- item two\n",
    "**bold** _italic_ `code` [link](http://x.y)",
    "```python\nprint('hi')\n```",
    "| a | b |\n|---|---|\n| 1 | 2 |",
    "> quoted line\n> another",
    "key: value\nlist:\n  - a\n  - b",
    "<?xml version=\"1.0\"?><root attr='1'/>",
    "C:\\Users\\name\\file.txt",
    "/usr/local/bin/python3",
]

MATH = [
    "∑ᵢ xᵢ² ≤ ∞",
    "∀x ∈ ℝ, ∃y: x < y",
    "E = mc²",
    "α β γ δ ε ζ η θ",
    "√2 ≈ 1.414",
    "∫₀¹ f(x) dx",
    "a ≠ b ⇒ ¬(a = b)",
    "½ ¼ ¾ ⅓",
    "x₁ + x₂ = y³",
    "\\frac{a}{b} + \\sqrt{c}",
]

_ASCII_CONTROLS = [chr(code) for code in range(0x01, 0x20) if chr(code) not in "\t\n\r"]
_RUN_LENGTHS = [2, 3, 5, 8, 13, 33]

GENERATED = (
    [f"control {character} character" for character in _ASCII_CONTROLS]
    + [" " * length + "word" for length in _RUN_LENGTHS]
    + ["word" + "\n" * length for length in _RUN_LENGTHS]
    + [str(10**length) for length in range(1, 16, 3)]
)

CORPUS = (
    PLAIN_ENGLISH
    + PUNCTUATION
    + NUMBERS
    + ACCENTS
    + EMOJI
    + SCRIPTS
    + CODE
    + WHITESPACE
    + SPECIAL_TOKEN_LOOKALIKES
    + BYTE_FALLBACK
    + LONG
    + STRUCTURED
    + MATH
    + GENERATED
)
