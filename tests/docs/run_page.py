"""Runs the blocks of one docs page in order, in the current directory: ``python run_page.py blocks.json``.

Python blocks run in one namespace (compiled with the page's file name and line numbers, so a traceback points
into the page); shell blocks run with ``bash -e -o pipefail``, each starting with the environment the previous
block left (exported variables carry over, as in a terminal); file blocks are written. Exits 1 at the first
block that fails, naming it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path


def main() -> int:
    blocks = json.loads(Path(sys.argv[1]).read_text())
    sys.path.insert(0, ".")  # modules a page writes (file blocks) import like a reader's
    ns: dict = {"__name__": "__main__"}
    for b in blocks:
        where = f"docs/{b['page']}:{b['line']}"
        print(f"--- {where} ({b['kind']})", flush=True)
        if b["kind"] == "file":
            out = Path(b["reason"])
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(b["code"])
        elif b["kind"] == "python":
            src = "\n" * (b["line"] - 1) + b["code"]
            try:
                exec(compile(src, where.split(":")[0], "exec"), ns)
            except BaseException:
                traceback.print_exc()
                print(f"FAILED: the Python block at {where}", flush=True)
                return 1
            sys.stdout.flush()
        elif b["kind"] == "sh":
            # A reader's terminal keeps what a block exports (KILN_TARGET_PATH, a token): so do the blocks here,
            # Python blocks included.
            env_file = Path(".docs-env").resolve()
            script = f"trap 'env -0 > {env_file}' EXIT\n" + b["code"]
            rc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script]).returncode
            if env_file.exists():
                new = dict(kv.split("=", 1) for kv in env_file.read_text().split("\0") if "=" in kv)
                for k in set(os.environ) - set(new):
                    del os.environ[k]
                os.environ.update(new)
            if rc != 0:
                print(f"FAILED: the shell block at {where} exited with status {rc}", flush=True)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
