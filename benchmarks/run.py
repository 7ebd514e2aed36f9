"""Run the benchmarks and (re)write their sections of BENCHMARKS.md (``make bench``).

Every module in ``benchmarks/`` is a benchmark, except this one, the tools in ``TOOLS`` and names
starting with ``_``. A module exposes either

* ``run(quick: bool = False) -> str`` returning its section as markdown, or
* ``main(argv) -> int`` printing its markdown to stdout (its stdout becomes the section).

Each module owns one section of BENCHMARKS.md, between the markers
``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``; a run replaces only the
sections of the modules it ran and keeps everything else in the file (the
hand-written notes around them). A module without a section yet gets one at
the end of the file.

    python -m benchmarks.run                       # all of them
    python -m benchmarks.run --only backtest_speed # one (repeat --only for more)
    python -m benchmarks.run --list
    python -m benchmarks.run --quick               # small sizes: a smoke test, numbers not comparable
    python -m benchmarks.run --print               # to stdout instead of BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import pkgutil
import re
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "BENCHMARKS.md"
HEADER = """# Benchmarks

Measured by `make bench` (`python -m benchmarks.run`); each section below is
rewritten by its module in `benchmarks/`, the text outside the sections is
kept. Not timed tests: numbers depend on the machine and on what else runs on
it, so every section says what it measured on.
"""


#: Modules of ``benchmarks/`` that are tools, not benchmarks (no section of their own).
TOOLS = {"run", "engine_digest"}


def names() -> list[str]:
    """The benchmark modules, in name order."""
    package = Path(__file__).resolve().parent
    return sorted(
        info.name for info in pkgutil.iter_modules([str(package)])
        if info.name not in TOOLS and not info.name.startswith("_")
    )


def _runner(name: str) -> Callable[[bool], str]:
    module = importlib.import_module(f"benchmarks.{name}")
    run = getattr(module, "run", None)
    if callable(run):
        takes_quick = "quick" in inspect.signature(run).parameters
        return lambda quick: run(quick=quick) if takes_quick else run()
    main = getattr(module, "main", None)
    if callable(main):
        def via_main(quick: bool) -> str:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                code = main([])
            if code:
                raise RuntimeError(f"benchmarks.{name}.main exited with {code}")
            return out.getvalue()
        return via_main
    raise RuntimeError(f"benchmarks.{name} has neither run() nor main()")


def replace_section(document: str, name: str, body: str) -> str:
    r"""``document`` with the section of ``name`` set to ``body`` (appended if it has none).

    >>> doc = replace_section("# B\n\nnotes", "speed", "1 run/s")
    >>> doc
    '# B\n\nnotes\n\n<!-- bench:speed -->\n1 run/s\n<!-- /bench:speed -->\n'
    >>> replace_section(doc + "more notes", "speed", "2 runs/s").splitlines()[5:]
    ['2 runs/s', '<!-- /bench:speed -->', 'more notes']
    """
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(document):
        return pattern.sub(lambda _: block, document, count=1)
    return document.rstrip() + "\n\n" + block + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run only this benchmark")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and stop")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--print", dest="to_stdout", action="store_true", help="print instead of writing the file")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the file to update (default BENCHMARKS.md)")
    args = parser.parse_args(argv)
    available = names()
    if args.list:
        print("\n".join(available))
        return 0
    unknown = sorted(set(args.only) - set(available))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; there are: {', '.join(available)}")
    chosen = args.only or available
    failed = []
    for name in chosen:
        print(f"== {name}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            body = _runner(name)(args.quick)
        except Exception as problem:  # one broken benchmark must not lose the others' sections
            print(f"benchmarks.{name} failed: {problem!r}", file=sys.stderr)
            failed.append(name)
            continue
        print(f"== {name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        if args.to_stdout:
            print(body)
        else:  # read again: the notes around the sections may have been edited while it ran
            document = args.out.read_text() if args.out.exists() else HEADER
            args.out.write_text(replace_section(document, name, body))  # after each one: a long run keeps what it measured
    if not args.to_stdout:
        print(f"wrote {args.out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
