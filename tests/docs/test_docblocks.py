"""The docs runner itself: how markers classify blocks (docblocks.py) and how run_page.py runs service blocks
(a real server, Python's http.server on 127.0.0.1 port 0, started, read back, stopped)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from docblocks import parse_text
from run_page import commands

RUN_PAGE = Path(__file__).with_name("run_page.py")

SERVER = "python -m http.server 0 --bind 127.0.0.1"
READY = r"port (?P<PORT>\d+)"


def test_markers_classify_the_block_right_after_them() -> None:
    page = parse_text(
        "t.md",
        "<!-- docs-test: board -->\n\n"
        "<!-- docs-test: service listening on (?P<TRACKER>\\S+) -->\n```sh\nkiln tracker --port 0\n```\n\n"
        '```sh\nkiln devices --tracker "$TRACKER"\n```\n\n'
        "<!-- docs-test: skip needs a probe -->\n```sh\nkiln flash x.kpkg -b pyocd\n```\n",
    )
    assert page.board
    assert [(b.kind, b.reason) for b in page.blocks] == [
        ("service", r"listening on (?P<TRACKER>\S+)"),
        ("sh", ""),
        ("skip", "needs a probe"),
    ]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("<!-- docs-test: service -->\n```sh\nkiln tracker\n```\n", "a service block is a sh block"),
        ("<!-- docs-test: service ready -->\n```python\nprint(1)\n```\n", "a service block is a sh block"),
        ("<!-- docs-test: service listening on ( -->\n```sh\nkiln tracker\n```\n", "not a regex"),
        ("<!-- docs-test: skip -->\n```sh\nls\n```\n", "needs a reason"),
        ("<!-- docs-test: sevrice x -->\n```sh\nls\n```\n", "unknown docs-test marker 'sevrice'"),
    ],
)
def test_bad_markers_are_errors_that_name_the_page_and_line(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error) as e:
        parse_text("how-to/x.md", text)
    assert str(e.value).startswith("how-to/x.md:")


def test_a_service_block_has_one_command_a_line() -> None:
    code = "# a comment\nkiln tracker --port 0   # until Ctrl-C\n\nkiln serve --tracker x \\\n    --port 0\n"
    assert commands(code) == [
        "kiln tracker --port 0   # until Ctrl-C",
        "kiln serve --tracker x      --port 0",
    ]


def _run(tmp_path: Path, blocks: list[dict]) -> subprocess.CompletedProcess[str]:
    spec = tmp_path / "blocks.json"
    spec.write_text(json.dumps([{"page": "t.md", "line": i + 1, **b} for i, b in enumerate(blocks)]))
    return subprocess.run(
        [sys.executable, str(RUN_PAGE), str(spec)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,  # a backstop: the blocks below finish in about a second
        env=dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]),
    )


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_service_runs_in_the_background_for_the_blocks_after_it_and_is_stopped(tmp_path: Path) -> None:
    fetch = (
        'python -c "import os, urllib.request; '
        "print(urllib.request.urlopen('http://127.0.0.1:%s/' % os.environ['PORT']).status)\" > status.txt\n"
        'echo "$PORT" > port.txt\n'
    )
    r = _run(
        tmp_path,
        [
            {"kind": "service", "code": SERVER + "\n", "reason": READY},
            {"kind": "sh", "code": fetch, "reason": ""},
        ],
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "status.txt").read_text().strip() == "200"  # the block reached the running server
    port = int((tmp_path / "port.txt").read_text())
    assert _refused(port), "the server still runs after the page"


def test_a_service_that_ends_before_it_is_ready_fails_the_page(tmp_path: Path) -> None:
    r = _run(tmp_path, [{"kind": "service", "code": "python -c 'print(\"no port\")'\n", "reason": READY}])
    assert r.returncode == 1
    assert "ended (status 0) before it printed a line matching" in r.stdout and "no port" in r.stdout


def test_a_service_that_dies_before_the_page_ends_fails_it(tmp_path: Path) -> None:
    # the server serves one request in a thread of its own and exits: it is ready, then gone
    once = (
        "python -c \"import http.server as h; s = h.HTTPServer(('127.0.0.1', 0), h.SimpleHTTPRequestHandler); "
        "print('port', s.server_address[1], flush=True); s.handle_request()\""
    )
    fetch = (
        'python -c "import os, urllib.request; '
        "urllib.request.urlopen('http://127.0.0.1:%s/' % os.environ['PORT'])\""
    )
    r = _run(
        tmp_path,
        [
            {"kind": "service", "code": once + "\n", "reason": READY},
            {"kind": "sh", "code": fetch + "\nsleep 1\n", "reason": ""},
        ],
    )
    assert r.returncode == 1
    assert "ended on its own (status 0) before the page did" in r.stdout


def test_a_failing_block_after_a_service_still_stops_it(tmp_path: Path) -> None:
    r = _run(
        tmp_path,
        [
            {"kind": "service", "code": SERVER + "\n", "reason": READY},
            {"kind": "sh", "code": 'echo "$PORT" > port.txt\nfalse\n', "reason": ""},
        ],
    )
    assert r.returncode == 1 and "exited with status 1" in r.stdout
    assert _refused(int((tmp_path / "port.txt").read_text()))
