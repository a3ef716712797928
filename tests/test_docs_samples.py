"""Every Python sample in the documentation runs as written.

Conventions (also in docs/testing.md, "Samples in the documentation"):

- Each page (``docs/**/*.md`` and ``README.md``) runs in a fresh subprocess, with the
  repository root as working directory (``examples.*`` imports work) and ``-W error``.
- Its `````python`` blocks run in page order, in one namespace, as one script would
  (``__name__ == "__main__"``): no top-level ``await``, ``asyncio.run(main())`` instead.
- A block with a title, `````python title="myapp.py"`` (any language), is a file: it is
  written under that name into the page's own temporary folder, which is first on
  ``sys.path``, instead of being run; a later block with the same title continues it.
- Files named ``test_*.py`` are pytest modules: once the page's blocks ran,
  ``python -m pytest -W error`` runs them in that folder. The configuration is the page's
  `````toml title="pyproject.toml"`` block if it has one (testing.md does), otherwise the
  one testing.md shows (asyncio auto mode).
- ``<!-- docs-samples: serve module:attr -->`` in a page serves that WsApp (a module of
  the page or of the repository) on a free port before the next block runs, and stops it
  after the page: blocks talk to it at ``127.0.0.1:8080``, the address the docs show for
  ``python -m wsevents run``, which the runner replaces with the real one.
- ``web.run_app`` (and so ``ws.run()`` and ``wsevents.server.run``) serves on a free port,
  checks that the server answers HTTP and every WebSocket route a handshake, stops and
  returns, instead of serving until Ctrl-C.
- ``redis://127.0.0.1:6379/0`` in a block is replaced by ``REDIS_URL`` when that is set.
- Shell, JavaScript, JSON and other blocks without a title are not run (the browser
  client has its own tests).

A failing page fails its test with the page, the block number, the line and the error.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE_TIMEOUT = 90.0

FENCE = re.compile(r"^(?P<fence>```+)\s*(?P<lang>[\w+-]*)(?P<attrs>[^`\n]*)$")
TITLE = re.compile(r"""\btitle=(?P<q>["'])(?P<title>[^"']+)(?P=q)""")
DIRECTIVE = re.compile(r"^<!--\s*docs-samples:\s*serve\s+(?P<target>[\w.]+:\w+)\s*-->\s*$")
PYTHON = {"python", "py", "python3"}
# The settings of testing.md's pyproject.toml, for pages whose test modules rely on them.
PYTEST_CONFIG = ("-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function")


@dataclass(frozen=True)
class Item:
    kind: str  # "code", "file" or "serve"
    block: int  # number of the fenced block on its page, from 1 (0 for a directive)
    line: int  # line of the block's first line of code (or of the directive)
    source: str = ""
    name: str = ""
    target: str = ""


def parse_page(text: str) -> list[Item]:
    """The page's samples and directives, in order."""
    items: list[Item] = []
    lines = text.splitlines()
    block = 0
    i = 0
    while i < len(lines):
        directive = DIRECTIVE.match(lines[i])
        if directive:
            items.append(Item("serve", 0, i + 1, target=directive["target"]))
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        block += 1
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence["fence"]:
            end += 1
        source = "\n".join(lines[i + 1 : end]) + "\n"
        title = TITLE.search(fence["attrs"])
        if title:
            items.append(Item("file", block, i + 2, source, name=title["title"]))
        elif fence["lang"].lower() in PYTHON:
            items.append(Item("code", block, i + 2, source))
        i = end + 1
    return items


def _pages_with_samples() -> list[Path]:
    pages = sorted([*ROOT.joinpath("docs").rglob("*.md"), ROOT / "README.md"])
    return [
        page
        for page in pages
        if any(item.kind != "serve" for item in parse_page(page.read_text("utf-8")))
    ]


PAGES = _pages_with_samples()


def _page_id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _env(workdir: Path) -> dict[str, str]:
    path = os.pathsep.join([str(workdir), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path.rstrip(os.pathsep)}


def _failure(what: str, result: subprocess.CompletedProcess[str]) -> str:
    return f"{what} (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"


@pytest.mark.timeout(2 * PAGE_TIMEOUT + 30)
@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_docs_page_samples_run(page: Path, tmp_path: Path) -> None:
    items = parse_page(page.read_text("utf-8"))
    workdir = tmp_path / "page"
    workdir.mkdir()
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps({"page": _page_id(page), "items": [vars(item) for item in items]}), "utf-8"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-m", "tests.docs_samples_runner", str(plan), str(workdir)],
        cwd=ROOT,
        env=_env(workdir),
        capture_output=True,
        text=True,
        timeout=PAGE_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, _failure(f"samples of {_page_id(page)} failed", result)

    files = [item.name for item in items if item.kind == "file"]
    tests = [name for name in files if name.startswith("test_")]
    if tests:
        config = () if "pyproject.toml" in files else PYTEST_CONFIG
        command = [sys.executable, "-m", "pytest", "-W", "error", "-p", "no:cacheprovider"]
        result = subprocess.run(
            [*command, *config, *tests],
            cwd=workdir,
            env=_env(workdir),
            capture_output=True,
            text=True,
            timeout=PAGE_TIMEOUT,
            check=False,
        )
        assert result.returncode == 0, _failure(
            f"pytest samples of {_page_id(page)} ({', '.join(tests)}) failed", result
        )


def test_every_page_with_python_is_checked() -> None:
    # A sample that the parser missed would never run: every page with a python fence is
    # one of PAGES, and the pages known to have samples are there.
    fenced = {
        _page_id(page)
        for page in [*ROOT.joinpath("docs").rglob("*.md"), ROOT / "README.md"]
        if re.search(r"^```+\s*py", page.read_text("utf-8"), re.MULTILINE)
    }
    assert fenced == {_page_id(page) for page in PAGES}
    assert {"README.md", "docs/testing.md", "docs/python-client.md"} <= fenced


def test_parse_page_finds_blocks_files_and_directives() -> None:
    text = "\n".join(
        [
            "# Page",  # 1
            "```python",  # 2
            "x = 1",  # 3
            "```",  # 4
            "<!-- docs-samples: serve myapp:app -->",  # 5
            '```python title="myapp.py"',  # 6
            "app = None",  # 7
            "```",  # 8
            "```sh",  # 9
            "echo no",  # 10
            "```",  # 11
            '```toml title="pyproject.toml"',  # 12
            "[tool.pytest.ini_options]",  # 13
            "```",  # 14
            "````python",  # 15
            "```",  # 16: inside the four-backtick block
            "````",  # 17
        ]
    )
    assert parse_page(text) == [
        Item("code", 1, 3, "x = 1\n"),
        Item("serve", 0, 5, target="myapp:app"),
        Item("file", 2, 7, "app = None\n", name="myapp.py"),
        Item("file", 4, 13, "[tool.pytest.ini_options]\n", name="pyproject.toml"),
        Item("code", 5, 16, "```\n"),
    ]
