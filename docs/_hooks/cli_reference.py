"""mkdocs hook: fills ``<!-- cli-reference -->`` in a page with ``kiln --help`` and every subcommand's help,
taken from the argparse parser itself (kiln.cli.build_parser), so the reference cannot drift from the code."""

from __future__ import annotations

import argparse
import os

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
