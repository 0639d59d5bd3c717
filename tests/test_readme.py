"""The README's shell commands run as written on a fresh clone (a doc test).

Every ``bash`` block of the README runs in the clone, one block per bash process that
stops at the first failing command, except the ``make`` lines (CI itself is ``make
test``). Run directories go to a temporary folder instead of ``runs/``; the venv is
this interpreter's.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def blocks() -> list[str]:
    """The README's bash blocks, without the ``make`` lines."""
    found = []
    for block in BLOCK.findall((ROOT / "README.md").read_text()):
        lines = [line for line in block.splitlines() if line.strip() and not line.startswith("make ")]
        if lines:
            found.append("\n".join(lines))
    return found


def test_the_readme_has_the_commands_a_new_user_needs():
    commands = "\n".join(blocks())
    assert commands.startswith("source .venv/bin/activate")
    assert "fl-ee check" in commands and "fl-ee run" in commands


@pytest.mark.e2e
@pytest.mark.skipif(not (ROOT.parent / "shared" / "data").is_dir(), reason="no ../shared/data beside the clone")
@pytest.mark.parametrize("block", blocks())
def test_a_readme_block_runs_as_written(block, tmp_path):
    script = block.replace("source .venv/bin/activate", f"source {Path(sys.prefix) / 'bin' / 'activate'}")
    script = script.replace("runs/", f"{tmp_path}/runs/")
    done = subprocess.run(["bash", "-e", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, f"{block}\n--- stderr:\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr
