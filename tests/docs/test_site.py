"""The documentation site builds: ``mkdocs build --strict`` (mkdocs.yml), which fails on a broken link or
anchor, a page missing from the nav's files, and on warnings of the API reference (mkdocstrings) and the CLI
reference hook. The site goes to a temporary directory, never into the repo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_site_builds_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="the dev extra (mkdocs, mkdocstrings[python]) is not installed")
    pytest.importorskip("mkdocstrings")
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (
        f"mkdocs build --strict failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-8000:]}"
    )
    assert (site / "index.html").is_file()
    cli = (site / "reference" / "cli" / "index.html").read_text()
    assert "kiln compile" in cli and "--pipeline" in cli, "the CLI reference was not generated"
    api = (site / "reference" / "python-api" / "index.html").read_text()
    assert "default_pipeline" in api, "the Python API reference was not generated"
