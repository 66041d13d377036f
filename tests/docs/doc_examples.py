"""The examples of a documentation page, read as a test reads them: each shell or Python block, what the page says
about running it, and the output the page shows for it.

The page's convention (stated on the page in a comment):

- an example is a fenced ``bash`` or ``python`` block; the fenced ``text title="Output"`` block right after it is
  what it prints (stdout, then stderr, as a terminal shows them);
- in an output, a line ``...`` stands for any number of lines, and ``...`` inside a line for any text;
- a comment ``<!-- test: skip (why) -->`` right before a block keeps it out of the test; ``<!-- test: server -->``
  marks the command that starts the server (the test starts it on a free port and puts that port in every later
  example and output in place of the page's 127.0.0.1:8000).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PAGE_ADDRESS = "127.0.0.1:8000"
_FENCE = re.compile(r"^```(\S*)(.*)$")
_MARK = re.compile(r"^<!-- test: (\w+)(.*)-->$")


@dataclass
class Example:
    language: str  # "bash" or "python"
    code: str
    mark: str | None  # "skip", "server" or None
    output: str | None  # the page's output block, or None when it shows none
    line: int  # where the block starts on the page (1-based), for messages
    section: str  # the title of the page's section (## heading) it is in


def _blocks(text: str) -> list[tuple[int, str, str, str, str | None, str]]:
    """(line, language, info, content, mark, section) of every fenced block at the start of a line."""
    blocks, lines, i, mark, section = [], text.splitlines(), 0, None, ""
    while i < len(lines):
        marked, fence = _MARK.match(lines[i]), _FENCE.match(lines[i])
        if lines[i].startswith("## "):
            section, mark = lines[i].removeprefix("## ").strip(), None
        elif marked:
            mark = marked.group(1)
        elif fence:
            start, body = i, []
            i += 1
            while lines[i] != "```":
                body.append(lines[i])
                i += 1
            blocks.append((start + 1, fence.group(1), fence.group(2), "\n".join(body), mark, section))
            mark = None
        elif lines[i].strip():
            mark = None  # a mark belongs to the block right after it
        i += 1
    return blocks


def page_examples(path: Path) -> list[Example]:
    """The examples of a page in order, each with the output block that follows it."""
    examples: list[Example] = []
    for line, language, info, content, mark, section in _blocks(path.read_text()):
        if language in ("bash", "python"):
            examples.append(Example(language, content, mark, None, line, section))
        elif language == "text" and 'title="Output"' in info:
            assert examples and examples[-1].output is None, f"{path}:{line}: an output block follows no example"
            examples[-1].output = content
    return examples


def _line_pattern(expected: str) -> re.Pattern:
    return re.compile(".*".join(re.escape(part) for part in expected.split("...")) + r"\Z", re.DOTALL)


def output_matches(expected: str, actual: str) -> bool:
    """Whether ``actual`` fits ``expected`` line by line, with the ``...`` wildcards; trailing spaces and the
    final newline do not count."""
    want = [line.rstrip() for line in expected.split("\n")]
    got = [line.rstrip() for line in actual.rstrip("\n").split("\n")]

    def fits(w: int, g: int) -> bool:
        if w == len(want):
            return g == len(got)
        if want[w] == "...":
            return any(fits(w + 1, k) for k in range(g, len(got) + 1))
        return g < len(got) and _line_pattern(want[w]).match(got[g]) is not None and fits(w + 1, g + 1)

    return fits(0, 0)
