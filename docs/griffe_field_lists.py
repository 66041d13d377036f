"""A griffe extension for the API reference. The package's docstrings describe fields as lines ``name: what`` (a
lower-case name, or ``a, b: what``), often under a heading line ``Heading:``, hard-wrapped with indented
continuation lines. Markdown would run them together into one paragraph; this turns each such line into a list item
with the names as code and each heading into a bold line, and leaves every other line as it is."""

from __future__ import annotations

import re

import griffe

FIELD = re.compile(r"^(\s*)([a-z_][\w.*]*(?:, [A-Za-z_][\w.*]*)*): (\S.*)$")
HEADING = re.compile(r"^([A-Z][\w ,'\"()-]*):$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def field_lists(text: str) -> str:
    """The docstring ``text`` with its field lines as Markdown list items."""
    out: list[str] = []
    item_indent = None  # the indentation of the current list item's field line, while in a list
    for line in text.split("\n"):
        heading, field = HEADING.match(line), FIELD.match(line)
        if not line.strip():
            item_indent = None
            out.append("")
        elif heading:
            item_indent = None
            out += ["", f"**{heading.group(1)}**", ""]
        elif field:
            if item_indent is None and out and out[-1]:
                out.append("")  # a list must start after a blank line
            item_indent = len(field.group(1))
            names = ", ".join(f"`{name}`" for name in field.group(2).split(", "))
            out.append(f"- {names}: {field.group(3)}")
        elif item_indent is not None and _indent(line) > item_indent:
            out[-1] += " " + line.strip()  # a continuation of the item
        else:
            if item_indent is not None:
                out.append("")  # the list ends: a blank line, or Markdown would run this line into its last item
            item_indent = None
            out.append(line)
    return "\n".join(out)


class FieldLists(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = field_lists(obj.docstring.value)
