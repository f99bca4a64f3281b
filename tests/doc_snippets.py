"""Run the Python snippets of ``README.md`` and ``docs/*.md``, so that none can rot.

Every ```` ```python ```` block of a page runs, in page order, in one namespace per page (a
block may use what an earlier block of its page defined), in a temporary working folder.
HTML comments directly above a block (invisible on the site and on GitHub) steer it:

* ``<!-- snippet: setup ... -->``: the code after ``setup`` runs first (small stand-ins for
  what the prose assumes: a batch ``x, y``, a model, parameters);
* ``<!-- snippet: replace ("old", "new"), ... -->``: literal replacements made in the block
  before it runs (a shorter run, a smaller split), as Python string pairs;
* ``<!-- snippet: needs-data -->``: it reads downloaded data (MNIST, IMDb); it runs when the
  data folder exists (``$ADMM_JAX_DATA``, else ``../shared/data`` beside the repository) and
  is skipped otherwise;
* ``<!-- snippet: skip REASON -->``: it does not run (a recipe for several processes or
  hosts); the reason is required.

``pytest tests/test_docs.py`` runs every page (``test_page_snippets_run``). As a script,
``python tests/doc_snippets.py ROOT`` runs the pages of the repository at ``ROOT`` against
whichever ``admm_jax`` the interpreter imports (the fresh, non-editable install of
``test_a_fresh_install_runs_every_snippet``), prints one line per page and exits 1 on a
failure.
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import sys
import tempfile
import traceback
from pathlib import Path
from typing import NamedTuple

FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
DIRECTIVE = re.compile(r"<!--\s*snippet:\s*([\w-]+)(.*?)-->\s*$", re.S)


class Snippet(NamedTuple):
    """One block: its page and first line, its code (replacements made), the hidden setup,
    and why it does not run (``None``: it runs)."""

    page: str
    line: int
    code: str
    setup: str
    skip: str | None


def data_dir(root: Path) -> Path:
    """Where the downloaded data is looked for: ``$ADMM_JAX_DATA``, else ``../shared/data``."""
    return Path(os.environ.get("ADMM_JAX_DATA") or root.parent / "shared" / "data").resolve()


def pages(root: Path) -> list[Path]:
    """``README.md`` and every page under ``docs/``."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def _directives(before: str) -> list[tuple[str, str]]:
    """The ``<!-- snippet: ... -->`` comments directly above a block, top to bottom."""
    found = []
    tail = before.rstrip()
    while tail.endswith("-->"):
        start = tail.rfind("<!--")
        m = DIRECTIVE.match(tail[start:]) if start >= 0 else None
        if m is None:
            break
        found.append((m.group(1), m.group(2)))
        tail = tail[:start].rstrip()
    return found[::-1]


def snippets(page: Path, root: Path) -> list[Snippet]:
    """The Python blocks of ``page``, with their directives applied."""
    text = page.read_text()
    out = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        code, setup, skip = m.group(1), "", None
        for name, arg in _directives(text[:m.start()]):
            if name == "setup":
                setup += arg.strip("\n") + "\n"
            elif name == "replace":
                for old, new in ast.literal_eval(f"({arg.strip()},)"):
                    if old not in code:
                        raise ValueError(f"{page.name}:{line}: replace: {old!r} not in the block")
                    code = code.replace(old, new)
            elif name == "needs-data":
                if not data_dir(root).is_dir():
                    skip = f"needs downloaded data ({data_dir(root)} not found)"
            elif name == "skip":
                if not arg.strip():
                    raise ValueError(f"{page.name}:{line}: skip needs a reason")
                skip = arg.strip()
            else:
                raise ValueError(f"{page.name}:{line}: unknown snippet directive {name!r}")
        out.append(Snippet(str(page.relative_to(root)), line, code, setup, skip))
    return out


def run_page(page: Path, root: Path) -> list[str]:
    """Run the snippets of ``page`` in order in a temporary folder; return the skip notes.

    Raises:
      AssertionError: naming the page and line of the first block that fails, with its
        traceback.
    """
    notes, scope = [], {"__name__": "__snippet__"}
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        for s in snippets(page, root):
            if s.skip is not None:
                notes.append(f"{s.page}:{s.line}: skipped: {s.skip}")
                continue
            where = f"{s.page}:{s.line}"
            try:
                exec(compile(s.setup, f"{where} (setup)", "exec"), scope)  # noqa: S102
                exec(compile(s.code, where, "exec"), scope)  # noqa: S102
            except Exception:  # noqa: BLE001 - reported with the page and line
                raise AssertionError(f"{where}: the snippet fails:\n{traceback.format_exc()}"
                                     ) from None
    return notes


def main(argv: list[str]) -> int:
    """Run every page of the repository at ``argv[0]`` (default: this file's); 1 on failure."""
    import admm_jax

    root = Path(argv[0] if argv else Path(__file__).resolve().parents[1]).resolve()
    print(f"admm_jax from {admm_jax.__file__}")
    failed = 0
    for page in pages(root):
        try:
            notes = run_page(page, root)
            print(f"ok   {page.relative_to(root)}" + "".join(f"\n     {n}" for n in notes))
        except AssertionError as e:
            failed += 1
            print(f"FAIL {e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
