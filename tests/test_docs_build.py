"""The documentation builds with ``mkdocs build --strict``, API cross-references included.

Skipped when mkdocs is not installed (``pip install -e ".[docs]"``), except under CI
(``CI`` set), where a missing mkdocs fails: the docs build must not silently stop running.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "wsevents"

# Sphinx roles render as raw text in the mkdocstrings API reference.
SPHINX_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|mod|exc|data|obj|const):`")


def _require_mkdocs() -> None:
    missing = [m for m in ("mkdocs", "mkdocstrings", "material") if not importlib.util.find_spec(m)]
    if not missing:
        return
    reason = f"{', '.join(missing)} not installed (pip install -e '.[docs]')"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {reason}")
    pytest.skip(reason)


def test_docs_build_strict(tmp_path: Path) -> None:
    _require_mkdocs()
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr}"
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text("utf-8")
    assert not SPHINX_ROLE.search(api)
    # WsApp's docstring links to its method: the cross-reference was resolved and rendered.
    assert re.search(r'<a class="autorefs[^>]*href="#wsevents\.WsApp\.attach"', api)


def test_docstrings_use_mkdocstrings_cross_references() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for lineno, line in enumerate(path.read_text("utf-8").splitlines(), 1)
        if SPHINX_ROLE.search(line)
    ]
    assert not found, "write [`Name`][] or [`Name`][full.path], not Sphinx roles:\n" + "\n".join(
        found
    )
