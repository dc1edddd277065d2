"""Every code block of every page under docs/ runs as pasted, as README.md's do (tests/test_readme.py: the same
``# needs:`` convention for blocks that need a download or minutes of CPU), and the site builds with
``mkdocs build --strict`` where the ``[docs]`` extra is installed."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import yaml

from test_readme import REPO, blocks, run_block

DOCS = REPO / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
CASES = [(page.relative_to(DOCS).as_posix(), i, lang, code) for page in PAGES for i, (lang, code) in enumerate(blocks(page))]


@pytest.mark.parametrize("page,index,lang,code", CASES, ids=[f"{p}-block{i}-{lang}" for p, i, lang, _ in CASES])
def test_docs_block_runs_as_pasted(page, index, lang, code, tmp_path):
    run_block(f"docs/{page} block {index}", lang, code, tmp_path)


def _nav_pages(nav) -> set[str]:
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, list):
        return set().union(*(_nav_pages(item) for item in nav))
    if isinstance(nav, dict):
        return set().union(*(_nav_pages(value) for value in nav.values()))
    return set()


def test_every_docs_page_is_in_the_nav():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    assert config["docs_dir"] == "docs"
    nav = _nav_pages(config["nav"])
    pages = {page.relative_to(DOCS).as_posix() for page in PAGES}
    assert pages - nav == set(), f"pages missing from mkdocs.yml's nav: {sorted(pages - nav)}"
    assert nav - pages == set(), f"nav entries without a page: {sorted(nav - pages)}"


def test_site_builds_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip('mkdocs / mkdocstrings not installed (pip install -e ".[docs]"; .ci/run builds the site)')
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
