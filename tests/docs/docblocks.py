"""The code blocks of docs/ pages, as tests/docs/test_code_blocks.py runs them.

A fenced block's info string names its language:

- ``python``: run in the page's interpreter (one per page: the blocks of a page share their variables, as a
  reader's session would); ``sh``/``bash``: run with ``bash -e`` (``kiln`` on PATH). Both run in the page's
  temporary working directory, in page order.
- ``text`` (output, diagrams), ``console`` (a transcript), ``toml``/``json``/``c``...: not code to run. A data
  block preceded by ``<!-- docs-test: file PATH -->`` is written to PATH in the working directory when the
  test reaches it, so later blocks can use it (a target's TOML file, a schedule file).

Markers are HTML comments on the line(s) right before a block, visible in the page's source:

- ``<!-- docs-test: service READY -->``: the block's commands are servers that run until Ctrl-C, as a reader
  starts them in terminals of their own. Each command (a line; ``\\`` continues it) starts in the background,
  the next block runs once it printed a line that matches the regular expression READY, and the runner stops
  them (SIGTERM) when the page ends. The values of READY's named groups are exported for the blocks after it:
  ``listening on (?P<TRACKER>\\S+)`` sets ``$TRACKER`` to the address a server printed.
- ``<!-- docs-test: board -->`` anywhere in a page: the page reaches a Linux board over SSH. The test gives it
  one: an OpenSSH server of its own on 127.0.0.1 at a free port (this machine; its own config and a
  throwaway host key) that accepts the throwaway key ``~/.ssh/id_ed25519`` of the page's home directory; ``$BOARD`` and
  ``$BUILD_SERVER`` are its ``USER@127.0.0.1:PORT``, ``$BOARD_TARGET`` the target it runs natively. Its host
  key is not in ``~/.ssh/known_hosts`` yet, as with a new board.
- ``<!-- docs-test: skip REASON -->``: the block is not run (``apt-get``, a board on a debug probe); the test
  lists every skipped block with its reason.
- ``<!-- docs-test: slow REASON -->`` anywhere in a page: the page's test is marked ``slow`` (it compiles big
  models or boots emulators).
- ``<!-- docs-test: timeout SECONDS -->`` anywhere in a page: the page's backstop against a hang (default
  1500 s, under pytest-timeout's 1800 s so the page's output is shown); not a speed check: a loaded machine
  may take many times as long as an idle one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
RUN = {"python": "python", "py": "python", "sh": "sh", "bash": "sh", "shell": "sh"}
MARK = re.compile(r"<!--\s*docs-test:\s*(\w+)\s*(.*?)\s*-->")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)\s*(.*)$")


@dataclass
class Block:
    page: str  # relative to docs/
    line: int  # 1-based line of the first line of code
    lang: str  # the info string's language ("" when none)
    code: str
    kind: str  # "python", "sh", "file", "service", "skip", "text"
    reason: str = ""  # skip: why; file: the path to write; service: the regular expression of "ready"


@dataclass
class Page:
    path: str
    blocks: list[Block]
    slow: str | None  # the reason, when the page is slow
    timeout: float
    board: bool = False  # the page reaches a board over SSH ($BOARD)


def parse(path: Path) -> Page:
    return parse_text(path.relative_to(DOCS).as_posix(), path.read_text())


def parse_text(rel: str, text: str) -> Page:
    """The blocks and page markers of a page's text; ``rel`` names it in errors (its path under docs/)."""
    lines = text.split("\n")
    blocks: list[Block] = []
    slow, timeout, board = None, 1500.0, False
    pending: list[tuple[str, str]] = []  # markers seen since the last block
    i = 0
    while i < len(lines):
        line = lines[i]
        for m in MARK.finditer(line):
            word, arg = m.group(1), m.group(2)
            if word == "slow":
                slow = arg or "slow"
            elif word == "timeout":
                timeout = float(arg)
            elif word == "board":
                board = True
            elif word in ("skip", "file", "service"):
                pending.append((word, arg))
            else:
                raise ValueError(f"{rel}:{i + 1}: unknown docs-test marker {word!r}")
        fm = FENCE.match(line)
        if not fm:
            if line.strip() and not MARK.search(line):
                pending = []  # a marker applies to the block right after it only
            i += 1
            continue
        indent, fence, lang = fm.group(1), fm.group(2), fm.group(3).lower()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        if j == len(lines):
            raise ValueError(f"{rel}:{i + 1}: unclosed code block")
        body = [ln[len(indent) :] if ln.startswith(indent) else ln.lstrip() for ln in lines[i + 1 : j]]
        code = "\n".join(body) + "\n"
        kind, reason = ("text", "")
        marks = dict(pending)
        if "skip" in marks:
            kind, reason = "skip", marks["skip"]
            if not reason:
                raise ValueError(
                    f"{rel}:{i + 1}: a skipped block needs a reason (<!-- docs-test: skip WHY -->)"
                )
        elif "file" in marks:
            kind, reason = "file", marks["file"]
        elif "service" in marks:
            if lang not in RUN or RUN[lang] != "sh" or not marks["service"]:
                raise ValueError(
                    f"{rel}:{i + 1}: a service block is a sh block with the text its servers print when "
                    "ready (<!-- docs-test: service REGEX -->)"
                )
            try:
                re.compile(marks["service"])
            except re.error as e:
                raise ValueError(f"{rel}:{i + 1}: the service's ready pattern is not a regex: {e}") from e
            kind, reason = "service", marks["service"]
        elif lang in RUN:
            kind = RUN[lang]
        blocks.append(Block(rel, i + 2, lang, code, kind, reason))
        pending = []
        i = j + 1
    return Page(rel, blocks, slow, timeout, board)


def pages() -> list[Page]:
    return [parse(p) for p in sorted(DOCS.rglob("*.md"))]
