"""Every code block of README.md runs as pasted on a fresh clone: Python blocks with this interpreter, shell
blocks line by line (``vargen`` as ``python -m vargen.cli``). Blocks that start with ``# needs:`` (a
download, minutes of CPU) and the two set-up commands (which ``.ci/run`` itself runs) are listed, not run."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```(python|bash)\n(.*?)```", re.S)


def blocks():
    text = (REPO / "README.md").read_text()
    return [(lang, code) for lang, code in BLOCK.findall(text)]


def _run(cmd, cwd, **kw):
    env = {**os.environ, "VARGEN_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600, **kw)


def _shell_lines(code: str) -> list[str]:
    lines, current = [], ""
    for line in code.splitlines():
        line = line.rstrip()
        if not line or line.lstrip().startswith("#"):
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            lines.append(current)
            current = ""
    return lines


def _command(line: str) -> list[str]:
    words = shlex.split(line)
    if words[0] == "vargen":
        return [sys.executable, "-m", "vargen.cli", *words[1:]]
    if words[0] == "python" and words[1].startswith(("eval/", "app/")):
        return [sys.executable, str(REPO / words[1]), *words[2:]]
    raise AssertionError(f"README command the test cannot run: {line!r}")


CASES = [(i, lang, code) for i, (lang, code) in enumerate(blocks())]


@pytest.mark.parametrize("index,lang,code", CASES, ids=[f"block{i}-{lang}" for i, lang, _ in CASES])
def test_readme_block_runs_as_pasted(index, lang, code, tmp_path):
    first = code.strip().splitlines()[0]
    if first.startswith("# needs:"):
        pytest.skip(f"README block {index}: {first[2:]}")
    if "python3 -m venv" in code:  # the set-up commands: .ci/run runs the test one; here the main job itself
        out = _run([sys.executable, "-m", "vargen.cli", "generate", "--out", "out"], tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        assert (tmp_path / "out" / "grid.png").is_file() and (tmp_path / "out" / "0000_airplane.png").is_file()
        return
    if lang == "python":
        out = _run([sys.executable, "-c", code], tmp_path)
        assert out.returncode == 0, f"README block {index} failed:\n{code}\n{out.stderr[-3000:]}"
        return
    for line in _shell_lines(code):
        out = _run(_command(line), tmp_path)
        assert out.returncode == 0, f"README command failed: {line}\n{out.stderr[-3000:]}"
