"""mkdocs hooks for the kiln site.

- Fills ``<!-- cli-reference -->`` in a page with ``kiln --help`` and every subcommand's help, taken from the
  argparse parser itself (kiln.cli.build_parser), so the reference cannot drift from the code.
- Lets mkdocstrings find every part of the ``kiln`` package: the installed layout maps ``kiln`` to ``sdk/`` but
  ``kiln.rpc``, ``kiln.targets`` and ``kiln.runtime_c`` to folders beside it, which griffe's static loader
  cannot follow. A temporary folder mirrors the installed layout with symlinks (as ``scripts/lint`` does for
  mypy) and goes first on sys.path, which griffe searches.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _mirror_package() -> str:
    tmp = Path(tempfile.mkdtemp(prefix="kiln-docs-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    pkg = tmp / "kiln"
    pkg.mkdir()
    for f in (ROOT / "sdk").iterdir():
        (pkg / f.name).symlink_to(f)
    for part in ("rpc", "targets", "runtime_c"):
        (pkg / part).symlink_to(ROOT / part)
    return str(tmp)


def on_config(config):
    # Before mkdocstrings makes its handler (at the first page), which searches the repo root, then sys.path.
    sys.path.insert(0, _mirror_package())
    return config


MARKER = "<!-- cli-reference -->"


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            out.extend(action.choices.items())
    return out


def cli_reference() -> str:
    os.environ["COLUMNS"] = "110"  # argparse wraps to the terminal; fix the width for a stable page
    from kiln.cli import build_parser

    parser = build_parser()
    parts = ["## kiln\n", "```text\n" + parser.format_help() + "```\n"]
    for name, sub in _subcommands(parser):
        parts += [f"## kiln {name}\n", "```text\n" + sub.format_help() + "```\n"]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (mkdocs' hook signature)
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, cli_reference())
    return markdown
