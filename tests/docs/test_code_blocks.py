"""Every code block in docs/ runs (tests/docs/docblocks.py says how blocks are classified and marked).

One test per page: its blocks run in order in a fresh temporary directory, Python blocks sharing one
interpreter, shell blocks with ``kiln`` (and the repo's interpreter as ``python``) first on PATH. The
working directory links the repo's ``examples/`` and ``benchmarks/``, as in a checkout, and holds the
``model.onnx`` the how-to pages compile ("your model": the quick start's small CNN, input ``data``
1x3x16x16, output ``logits``) with an input for it in ``x.npy``. A page marked ``board`` gets an SSH board
(an OpenSSH server of its own on 127.0.0.1, tests/ssh/sshboard.py) in ``$BOARD``. Running the pages is the slow tier's
(each page starts ``kiln`` processes and compiles: 30-80 s a page on this machine; CI runs them all); the
fast tier checks the inventory and the links. ``test_inventory`` prints what runs, what is skipped and why.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from docblocks import DOCS, Page, pages

ROOT = DOCS.parent
PAGES = pages()
sys.path.insert(0, str(ROOT / "tests" / "ssh"))
import sshboard  # noqa: E402  - the SSH tests' board, shared


def _your_model(d: Path) -> None:
    """The model the pages call model.onnx (the quick start builds the same one) and an input for it."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype("float32"), "w")
    fc = numpy_helper.from_array(rng.standard_normal((8, 10)).astype("float32"), "fc")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["data", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["p"]),
            helper.make_node("Flatten", ["p"], ["f"]),
            helper.make_node("MatMul", ["f", "fc"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        initializer=[w, fc],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(d / "model.onnx"))
    np.save(d / "x.npy", rng.random((1, 3, 16, 16), dtype=np.float32))


def _param(page: Page):
    return pytest.param(page, id=page.path, marks=[pytest.mark.slow])


@contextlib.contextmanager
def _board(tmp_path: Path, home: Path):
    """The page's board: a real sshd on 127.0.0.1 (this machine) accepting ``~/.ssh/id_ed25519`` of the
    page's home; the environment variables the page reads it from. With root and unshare, the board's runner
    cache (``~/.cache/kiln`` of the login user, the default ``--remote-dir``) is a directory of the test's own,
    mounted over it in the sshd's private mount namespace."""
    from kiln.targets import native_target

    if not Path(sshboard.SSHD).exists():
        pytest.fail("the page reaches a board over SSH: install openssh-server (scripts/setup)")
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    key = sshboard.keygen(home / ".ssh" / "id_ed25519")
    prelude = None
    if sshboard.NAMESPACES:
        login_home = Path(pwd.getpwuid(os.getuid()).pw_dir)  # sshd starts sessions there, not in $HOME
        cache = login_home / ".cache" / "kiln"
        cache.mkdir(parents=True, exist_ok=True)
        (tmp_path / "board-cache").mkdir()
        prelude = f"mount --bind {tmp_path / 'board-cache'} {cache}"
    server = sshboard.Sshd(tmp_path / "board", key, prelude=prelude).start()
    try:
        dest = server.destination
        yield {"BOARD": dest, "BUILD_SERVER": dest, "BOARD_TARGET": native_target().name}
    finally:
        server.stop()


@pytest.mark.parametrize("page", [_param(p) for p in PAGES if any(b.kind != "text" for b in p.blocks)])
def test_page(page: Page, tmp_path: Path) -> None:
    runnable = [b for b in page.blocks if b.kind in ("python", "sh", "file", "service")]
    if not any(b.kind in ("python", "sh", "service") for b in runnable):
        pytest.skip("every code block of the page is marked skip")
    for name in ("examples", "benchmarks"):
        (tmp_path / name).symlink_to(ROOT / name)
    _your_model(tmp_path)
    spec = tmp_path / ".docs-blocks.json"
    spec.write_text(json.dumps([vars(b) for b in runnable]))
    bindir = str(Path(sys.executable).parent)
    pythonpath = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""), PYTHONPATH=pythonpath)
    # Nothing a page does lands in the real home directory (tokens, known hosts), but the build caches stay
    # shared: each target's libc and C runtime are built once, not once per page.
    env.setdefault("KILN_CACHE_DIR", str(Path.home() / ".cache" / "kiln"))
    env.setdefault("ZIG_GLOBAL_CACHE_DIR", str(Path.home() / ".cache" / "zig"))
    env["HOME"] = str(tmp_path / "home")
    env.pop("KILN_TARGET_PATH", None)
    env.pop("SSH_AUTH_SOCK", None)  # the page's keys only, not a developer's agent
    with contextlib.ExitStack() as stack:
        if page.board:
            env.update(stack.enter_context(_board(tmp_path, Path(env["HOME"]))))
        _run(page, tmp_path, spec, env)


def _run(page: Page, tmp_path: Path, spec: Path, env: dict[str, str]) -> None:
    # The page's processes (servers it starts in the background too) form one process group, ended after it.
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("run_page.py")), str(spec)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=page.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"docs/{page.path} took longer than {page.timeout:.0f} s\n{out[-8000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode != 0:
        pytest.fail(f"docs/{page.path}:\n{out[-8000:]}")


def test_inventory() -> None:
    """Counts every block by kind and lists the skipped ones with their reasons (shown with pytest -s)."""
    counts: Counter[str] = Counter()
    skipped = []
    for page in PAGES:
        for b in page.blocks:
            counts[b.kind] += 1
            if b.kind == "skip":
                skipped.append(f"  docs/{b.page}:{b.line}: {b.reason}")
            if b.kind == "text":
                assert b.lang, f"docs/{b.page}:{b.line}: give the block a language (text for output)"
    slow = [f"  docs/{p.path}: {p.slow}" for p in PAGES if p.slow]
    print(
        f"\ndocs code blocks: {counts['python']} python, {counts['sh']} shell, {counts['service']} services"
        f" (servers in the background), {counts['file']} written as files, {counts['skip']} skipped,"
        f" {counts['text']} text/data (not code)"
    )
    print("skipped:\n" + "\n".join(skipped))
    print("slow pages:\n" + "\n".join(slow))
    assert counts["python"] + counts["sh"] > 0
    boards = [p.path for p in PAGES if p.board]
    print("pages with an SSH board: " + ", ".join(boards))


@pytest.mark.parametrize("page", sorted(p.name for p in (DOCS / "how-to").glob("*.md")))
def test_how_to_says_where_it_fits(page: str) -> None:
    """Every how-to guide opens by placing itself in the data flow of docs/architecture.md."""
    head = "\n".join((DOCS / "how-to" / page).read_text().split("\n")[:16])
    assert "](../architecture.md#the-data-flow)" in head, (
        f"docs/how-to/{page}: link the data flow near the top"
    )
