"""report.md and index.html read back the way a reader's tools see them, for the report tests.

Markdown: headings by level with the lines under them, pipe tables split into cells, list items,
fenced blocks and code spans. HTML: a small element tree (html.parser) that also checks that
every non-void tag is closed in order. The tests assert facts through these (a number in a
given row and column, a verdict token in a cell, a counterexample verbatim in its block), so
rewording the report's sentences does not break them while a wrong fact still does.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

# a number standing alone: not the 16 of float16 nor the 2 of p25; "2.00×", "35%", "2048×2048" count
NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?!\w)")
FENCE = re.compile(r"^(`{3,})(.*)$")


def numbers(s: str) -> list[float]:
    """The numbers in a piece of text, in order."""
    return [float(m) for m in NUMBER.findall(s)]


def words(s: str) -> list[str]:
    """The words of a text, names with dots and dashes kept whole (cpu-box, torch.cuda.Event)."""
    return [w.strip(".") for w in re.findall(r"[\w.-]+", s) if w.strip(".")]


# -- Markdown ---------------------------------------------------------------------------------
def code_spans(s: str) -> list[str]:
    """The contents of the code spans in a Markdown line (padding and table pipe escapes undone)."""
    out = []
    for m in re.finditer(r"(?<!`)(`+)(?!`)(.*?)(?<!`)\1(?!`)", s):
        body = m.group(2)
        if len(body) > 1 and body.startswith(" ") and body.endswith(" "):
            body = body[1:-1]
        out.append(body.replace("\\|", "|"))
    return out


def plain(s: str) -> str:
    """The text a reader sees in a Markdown fragment: code spans shown as is, escapes undone,
    emphasis markers dropped, HTML entities decoded."""
    out, pos = [], 0
    for m in re.finditer(r"(?<!`)(`+)(?!`)(.*?)(?<!`)\1(?!`)", s):
        out.append(_unescape(s[pos:m.start()]))
        out.append(code_spans(m.group(0))[0])
        pos = m.end()
    out.append(_unescape(s[pos:]))
    return "".join(out).strip()


def _unescape(s: str) -> str:
    s = re.sub(r"(?<!\\)\*\*", "", s)
    return html.unescape(re.sub(r"\\([\\`*_\[\]|])", r"\1", s))


@dataclass
class Section:
    level: int
    title: str          # as written (markup kept)
    lines: list[str]    # everything under the heading up to the next heading of this level or above

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def subsections(self, level: int | None = None) -> list[Section]:
        return sections("\n".join(self.lines), level or self.level + 1)

    def tables(self) -> list[Table]:
        return tables(self.lines)

    def items(self) -> list[str]:
        """Top-level list items ("- ..."), markup kept."""
        return [ln[2:] for ln in _outside_fences(self.lines) if ln.startswith("- ")]

    def fences(self) -> list[Fenced]:
        return fences(self.lines)

    def paragraphs(self) -> list[str]:
        """Plain-text blocks that are neither tables, lists, quotes, headings nor fences."""
        out, cur = [], []
        for ln in _outside_fences(self.lines):
            if ln.strip() and not ln.startswith(("|", "- ", ">", "#", "`")):
                cur.append(ln)
            elif cur:
                out.append(" ".join(cur))
                cur = []
        return out + ([" ".join(cur)] if cur else [])


def _marked(lines: list[str]) -> list[tuple[str, bool]]:
    """Each line with whether it belongs to a fenced block (the fences included)."""
    out, fence = [], None
    for ln in lines:
        m = FENCE.match(ln)
        inside = fence is not None
        if fence is None and m:
            fence, inside = m.group(1), True
        elif fence is not None and ln.strip("`") == "" and len(ln) >= len(fence):
            fence = None
        out.append((ln, inside))
    return out


def _outside_fences(lines: list[str]) -> list[str]:
    return [ln for ln, inside in _marked(lines) if not inside]


def sections(md: str, level: int) -> list[Section]:
    """The sections whose heading has exactly `level` #s (headings inside fences are text)."""
    out: list[Section] = []
    for ln, inside in _marked(md.splitlines()):
        h = None if inside else re.match(r"^(#{1,6}) (.*)$", ln)
        if h and len(h.group(1)) == level:
            out.append(Section(level, h.group(2), []))
        elif h and len(h.group(1)) < level and out:
            out.append(Section(0, "", []))  # a higher heading ends the current section
        elif out:
            out[-1].lines.append(ln)
    return [s for s in out if s.level]


def section(md: str, title: str, level: int = 2) -> Section:
    """The one section of that level whose heading's plain text is `title`."""
    found = [s for s in sections(md, level) if plain(s.title) == title]
    assert len(found) == 1, (title, [s.title for s in sections(md, level)])
    return found[0]


@dataclass
class Table:
    head: list[str]
    rows: list[list[str]]

    def column(self, *words: str) -> int:
        """Index of the one header cell holding any of `words` (case-insensitive)."""
        hits = [i for i, h in enumerate(self.head) if any(w.lower() in plain(h).lower() for w in words)]
        assert len(hits) == 1, (words, self.head)
        return hits[0]


def split_row(line: str) -> list[str]:
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    return [c.strip() for c in re.split(r"(?<!\\)\|", body)]


def tables(lines: list[str]) -> list[Table]:
    out, block = [], []
    for ln in _outside_fences(lines) + [""]:
        if ln.startswith("|"):
            block.append(ln)
            continue
        if len(block) >= 2 and re.fullmatch(r"[\s|:-]+", block[1]):
            out.append(Table(split_row(block[0]), [split_row(r) for r in block[2:]]))
        block = []
    return out


@dataclass
class Fenced:
    fence: str
    lang: str
    body: str


def fences(lines: list[str]) -> list[Fenced]:
    """Fenced blocks: a closing fence is backticks only, at least as long as the opening one."""
    out, cur = [], None
    for ln in lines:
        m = FENCE.match(ln)
        if cur is None and m:
            cur = Fenced(m.group(1), m.group(2).strip(), "")
            body: list[str] = []
        elif cur is not None and ln.strip("`") == "" and len(ln) >= len(cur.fence):
            cur.body = "\n".join(body)
            out.append(cur)
            cur = None
        elif cur is not None:
            body.append(ln)
    return out


# -- HTML -------------------------------------------------------------------------------------
@dataclass
class Node:
    tag: str
    attrs: dict[str, str | None]
    children: list[Node | str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    @property
    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Node]:
        """Descendants in document order matching the tag, a class and attribute values."""
        out = []
        for c in self.children:
            if isinstance(c, Node):
                if ((tag is None or c.tag == tag) and (cls is None or cls in c.classes)
                        and all(c.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())):
                    out.append(c)
                out += c.all(tag, cls, **attrs)
        return out

    def one(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> Node:
        found = self.all(tag, cls, **attrs)
        assert len(found) == 1, (tag, cls, attrs, len(found))
        return found[0]


class Page(HTMLParser):
    """An element tree of a page, plus the nesting errors, ids and resource references seen."""
    VOID = frozenset({"meta", "br", "hr", "img", "input", "link", "col", "wbr", "source", "area", "base"})
    SVG_LEAVES = frozenset({"circle", "rect", "line", "path", "polyline", "polygon"})  # may be self-closed in SVG

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.open: list[Node] = [self.root]
        self.errors: list[str] = []
        self.ids: set[str] = set()
        self.tags: list[str] = []
        self.refs: list[str] = []

    def _add(self, tag: str, attrs: list[tuple[str, str | None]]) -> Node:
        self.tags.append(tag)
        node = Node(tag, dict(attrs))
        if node.attrs.get("id"):
            self.ids.add(node.attrs["id"])
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]
        self.open[-1].children.append(node)
        return node

    def handle_starttag(self, tag, attrs):
        node = self._add(tag, attrs)
        if tag not in self.VOID:
            self.open.append(node)

    def handle_startendtag(self, tag, attrs):
        self._add(tag, attrs)
        if tag not in self.VOID and tag not in self.SVG_LEAVES:
            self.errors.append(f"self-closed <{tag}/>")

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if len(self.open) == 1 or self.open[-1].tag != tag:
            self.errors.append(f"</{tag}> closes <{self.open[-1].tag}>")
        else:
            self.open.pop()

    def handle_data(self, data):
        self.open[-1].children.append(data)


def parse_html(page: str) -> Page:
    """The page's tree; fails the test if a tag is left open or closed out of order."""
    p = Page()
    p.feed(page)
    p.close()
    assert not p.errors, p.errors[:5]
    assert len(p.open) == 1, f"unclosed: {[n.tag for n in p.open[1:]]}"
    return p


def html_rows(table: Node) -> list[list[Node]]:
    """The cells (th and td) of each body and footer row of a table."""
    return [[c for c in tr.children if isinstance(c, Node) and c.tag in ("th", "td")]
            for part in table.children if isinstance(part, Node) and part.tag in ("tbody", "tfoot")
            for tr in part.all("tr")]


def html_head(table: Node) -> list[Node]:
    """The header cells of a table's first head row (a matrix has a verdict row under it)."""
    return table.one("thead").all("tr")[0].all("th")
