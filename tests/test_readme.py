"""Every code block of README.md runs as pasted on a fresh clone: Python blocks with this interpreter, shell
blocks line by line (``vargen`` as ``python -m vargen.cli``). Blocks that start with ``# needs:`` (a
download, minutes of CPU) and the two set-up commands (which ``.ci/run`` itself runs) are listed, not run; a block
whose only need is the CIFAR-10 archive runs where the archive is found (``$VARGEN_CIFAR10``, ``$VARGEN_SHARED``).
tests/test_docs.py runs the blocks of every page under docs/ with the same helpers."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```(python|bash)\n(.*?)```", re.S)
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")
README_MAX_LINES = 200
CIFAR10_NEED = "# needs: the CIFAR-10 archive ("  # the only need: runs where the archive is found
# statistics and dataset caches of the blocks (vargen fid): one folder per user, not ~/.cache
CACHE = os.environ.get("VARGEN_CACHE") or str(Path(tempfile.gettempdir()) / f"vargen-docs-test-{os.getuid()}")


def blocks(path: Path = REPO / "README.md") -> list[tuple[str, str]]:
    return [(lang, code) for lang, code in BLOCK.findall(path.read_text())]


def _run(cmd, cwd, **kw):
    env = {**os.environ, "VARGEN_THREADS": "1", "OMP_NUM_THREADS": "1", "VARGEN_CACHE": CACHE}
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
    raise AssertionError(f"documented command the test cannot run: {line!r}")


def skip_reason(where: str, code: str) -> str | None:
    """Why a block is listed and not run (its ``# needs:`` line), or None to run it."""
    first = code.strip().splitlines()[0]
    if not first.startswith("# needs:"):
        return None
    if first.startswith(CIFAR10_NEED):
        from vargen.eval.stats import cifar10_archive

        if cifar10_archive().is_file():
            return None
        return f"{where}: the CIFAR-10 archive is not at {cifar10_archive()} (set VARGEN_SHARED or VARGEN_CIFAR10)"
    return f"{where}: {first[2:]}"


def run_block(where: str, lang: str, code: str, tmp_path: Path) -> None:
    """Run one documented block in ``tmp_path`` (a fresh folder, as a new user's working directory)."""
    reason = skip_reason(where, code)
    if reason:
        pytest.skip(reason)
    if lang == "python":
        out = _run([sys.executable, "-c", code], tmp_path)
        assert out.returncode == 0, f"{where} failed:\n{code}\n{out.stderr[-3000:]}"
        return
    for line in _shell_lines(code):
        out = _run(_command(line), tmp_path)
        assert out.returncode == 0, f"{where}: command failed: {line}\n{out.stderr[-3000:]}"


CASES = [(i, lang, code) for i, (lang, code) in enumerate(blocks())]


@pytest.mark.parametrize("index,lang,code", CASES, ids=[f"block{i}-{lang}" for i, lang, _ in CASES])
def test_readme_block_runs_as_pasted(index, lang, code, tmp_path):
    if "python3 -m venv" in code:  # the set-up commands: .ci/run runs the test one; here the main job itself
        out = _run([sys.executable, "-m", "vargen.cli", "generate", "--out", "out"], tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        assert (tmp_path / "out" / "0000_airplane.png").is_file() and (tmp_path / "out" / "manifest.json").is_file()
        return
    run_block(f"README block {index}", lang, code, tmp_path)


def test_readme_is_a_front_door_of_at_most_200_lines():
    lines = len((REPO / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, (f"README.md has {lines} lines (at most {README_MAX_LINES}): move details to a "
                                       "page under docs/ and link it")


def test_readme_keeps_the_two_setup_commands_in_its_first_block():
    lang, code = blocks()[0]
    commands = [line for line in code.splitlines() if line.startswith("python3 -m venv")]
    assert commands == [
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/vargen generate --out out",
        'python3 -m venv .venv && .venv/bin/pip install -e ".[dev]" && .venv/bin/python -m pytest',
    ]


def test_readme_answers_a_newcomer_with_links_to_the_full_pages():
    text = (REPO / "README.md").read_text()
    links = {m.group(1) for m in LINK.finditer(text)}
    for target in links:
        if not target.startswith(("http://", "https://", "mailto:")):
            assert (REPO / target).exists(), f"README links to {target}, which does not exist"
    # own Janus-Pro checkpoint; which sampler; FID
    assert 'vargen.load("path/to/Janus-Pro-1B")' in text and "docs/model-transformers.md" in links
    assert "docs/samplers.md" in links and "Which sampler" in text
    assert "docs/evaluation.md" in links and "vargen fid" in text
