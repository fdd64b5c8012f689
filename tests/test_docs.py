"""Docs that execute: every example of README.md and docs/**/*.md is run or checked.

- every ```python block runs, in a fresh working directory, with ``__name__ == "__main__"``;
- every `vaescope ...` command of a ```bash block names a real command, and click parses its
  options and values (``vaescope CMD --help`` through ``CliRunner`` must work too); cheap ones run;
- every ```toml block is a valid config file on top of the dense16 preset;
- every relative link leads to a file, every ``--8<-- "README.md:NAME"`` to a section of README.md.

The convention: HTML comments right above a block (no blank line between) tell how to run it:

- ``<!-- docs-test: setup=tiny_run -->``: a tiny trained run lies at ``runs/dense16`` and at
  ``runs/dense16-seed0`` of the working directory;
- ``<!-- docs-test: setup=tiny_config -->``: ``vaescope.core.config.resolve`` starts from the tiny
  test overrides and data (the block's own overrides still win);
- ``<!-- docs-test: run -->`` (bash): its `vaescope` commands run for real, beside the tiny runs;
- ``<!-- docs-test: skip=REASON -->``: not run; reported as skipped with REASON (keep it rare);
- ``<!-- docs-test: continue -->`` (python): runs after the page's previous python block, in its
  namespace and working directory (one test for the chain, so a worked example reads in steps);
- ``<!-- docs-test: slow -->`` (python, on a chain's first block): the chain is ``@pytest.mark.slow``;
- ``<!-- docs-test: output -->`` (text): what the python blocks above it (since the previous output
  block of their chain) print: the same lines and words, the same integers, and decimals within
  10% + 0.02 (another machine's floating-point order moves a trained model's numbers a little;
  on the machine the page names they match exactly);
- ``<!-- NAME-example -->``: a marker by which other tests read the block (:func:`marked_block`).

An unknown ``docs-test:`` directive fails the test.

And in every block, as the tests of the README's examples always did: ``load_dataset("mnist")`` is
the tiny test dataset of ``conftest.py`` (8x8 bars, 512 training and 128 test images), and
``every=50`` is ``every=2`` (a loop over the tiny data has 8 steps). In bash blocks a shell variable
(``$L``) reads as ``1``.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from conftest import TINY_OVERRIDES

from vaescope.cli import main
from vaescope.core import config as config_mod

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if "_hooks" not in p.parts)]
# a fenced block and the HTML comment lines right above it
BLOCK = re.compile(r"((?:^<!--[^\n]*-->[ \t]*\n)*)^```([\w-]*)[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
DIRECTIVE = re.compile(r"docs-test: (setup=tiny_run|setup=tiny_config|run|skip=.+|continue|slow|output)")
SUBSTITUTIONS = {'load_dataset("mnist")': "load_dataset(__docs_tiny_npz__)", "every=50": "every=2"}


def _blocks(language: str) -> list[tuple[str, list[str], str]]:
    """``(page:line, comments above, code)`` of every block in ``language``, in page order."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for m in BLOCK.finditer(text):
            if m.group(2) == language:
                line = text[: m.start(2)].count("\n") + 1
                comments = re.findall(r"<!--\s*(.*?)\s*-->", m.group(1))
                found.append((f"{page.relative_to(ROOT)}:{line}", comments, m.group(3)))
    return found


def _directives(where: str, comments: list[str]) -> list[str]:
    directives = [c for c in comments if c.startswith("docs-test:")]
    for d in directives:  # a typo in a directive would silently run a block the wrong way
        assert DIRECTIVE.fullmatch(d), f"{where}: unknown directive <!-- {d} -->"
    return [d.removeprefix("docs-test: ") for d in directives]


def marked_block(marker: str) -> str:
    """The code of the python block under ``<!-- MARKER -->`` in README.md or docs/ (one only),
    for the tests that check what an example does (as ``test_api.readme_block`` for README.md)."""
    found = [code for _, comments, code in _blocks("python") if marker in comments]
    assert len(found) == 1, f"{len(found)} python blocks are marked <!-- {marker} -->; want one"
    return found[0]


PYTHON, BASH, TOML = _blocks("python"), _blocks("bash"), _blocks("toml")


def _chains() -> list:
    """The python blocks as the tests run them: a block with ``continue`` joins the page's chain
    before it; ``output`` text blocks join the chain above them. Each chain is a
    ``pytest.param(where, comments, parts)``, ``parts`` a list of ``("python" | "output", where, text)``."""
    chains: list[tuple[str, list[str], list[tuple[str, str, str]]]] = []
    for page in PAGES:
        text, open_chain = page.read_text(), None
        for m in BLOCK.finditer(text):
            where = f"{page.relative_to(ROOT)}:{text[: m.start(2)].count(chr(10)) + 1}"
            comments = re.findall(r"<!--\s*(.*?)\s*-->", m.group(1))
            directives = _directives(where, comments)
            if m.group(2) == "text" and "output" in directives:
                assert open_chain is not None, f"{where}: an output block with no python block above it"
                open_chain[2].append(("output", where, m.group(3)))
            elif m.group(2) == "python" and "continue" in directives:
                assert open_chain is not None, f"{where}: <!-- docs-test: continue --> with no python block before it"
                assert directives == ["continue"], f"{where}: a continued block takes its chain's set-up"
                open_chain[2].append(("python", where, m.group(3)))
            elif m.group(2) == "python":
                open_chain = (where, comments, [("python", where, m.group(3))])
                chains.append(open_chain)
    return [pytest.param(where, comments, parts, id=where,
                         marks=[pytest.mark.slow] if "docs-test: slow" in comments else [])
            for where, comments, parts in chains]


NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def same_output(printed: str, expected: str) -> str | None:
    """None when ``printed`` reads as ``expected`` (the ``output`` directive's rule), else why not."""
    got, want = printed.strip("\n").splitlines(), expected.strip("\n").splitlines()
    if len(got) != len(want):
        return f"{len(got)} lines printed, {len(want)} in the page:\n{printed}"
    for line, page_line in zip(got, want):
        if NUMBER.split(line) != NUMBER.split(page_line):
            return f"printed {line!r}, the page says {page_line!r}"
        for a, b in zip(NUMBER.findall(line), NUMBER.findall(page_line)):
            decimal = any(c in b for c in ".eE")
            if (not decimal and a != b) or (decimal and abs(float(a) - float(b)) > 0.1 * abs(float(b)) + 0.02):
                return f"printed {line!r}, the page says {page_line!r} ({a} against {b})"
    return None


CHAINS = _chains()


def _ids(blocks: list[tuple[str, list[str], str]]) -> list[str]:
    return [b[0] for b in blocks]


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory, tiny_npz: Path) -> Path:
    """A folder ``runs/`` with a tiny trained run as ``dense16`` and ``dense16-seed0`` (20 epochs,
    0.3 s: after the 3 of ``tiny_config`` no variable is active yet, and an example about them
    would have nothing to show)."""
    from vaescope.training.train import train

    root = tmp_path_factory.mktemp("docs-runs")
    cfg = config_mod.resolve("dense16", overrides=TINY_OVERRIDES + [f"data.source={tiny_npz}", "train.epochs=20"])
    train(cfg, root / "runs" / "dense16", progress=False)
    shutil.copytree(root / "runs" / "dense16", root / "runs" / "dense16-seed0")
    return root / "runs"


def _set_up(directives: list[str], where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            request: pytest.FixtureRequest) -> None:
    skips = [d.removeprefix("skip=") for d in directives if d.startswith("skip=")]
    if skips:
        pytest.skip(f"{where}: {skips[0]}")
    monkeypatch.chdir(tmp_path)
    if "setup=tiny_run" in directives or "run" in directives:
        shutil.copytree(request.getfixturevalue("tiny_runs"), tmp_path / "runs")
    if "setup=tiny_config" in directives:
        tiny = [*TINY_OVERRIDES, f"data.source={request.getfixturevalue('tiny_npz')}"]
        resolve = config_mod.resolve
        monkeypatch.setattr(config_mod, "resolve", lambda preset=None, config_file=None, overrides=(), **flags:
                            resolve(preset, config_file, [*tiny, *overrides], **flags))


def test_the_pages_hold_examples() -> None:  # a parse that found nothing would pass every test below
    assert len(PYTHON) >= 12 and len(BASH) >= 20 and TOML


# lightning's advice for a real machine, about the tiny data: not what an example is run for
@pytest.mark.filterwarnings("ignore:The number of training batches .* is smaller than the logging interval")
@pytest.mark.filterwarnings("ignore:The 'train_dataloader' does not have many workers")
@pytest.mark.parametrize("where, comments, parts", CHAINS)
def test_python_block_runs(where, comments, parts, tmp_path, monkeypatch, request, tiny_npz) -> None:
    _set_up(_directives(where, comments), where, tmp_path, monkeypatch, request)
    namespace = {"__name__": "__main__", "__docs_tiny_npz__": str(tiny_npz)}
    printed = io.StringIO()
    for kind, part_where, text in parts:
        if kind == "output":
            problem = same_output(printed.getvalue(), text)
            assert problem is None, f"{part_where}: {problem}"
            printed = io.StringIO()
            continue
        for docs, tiny in SUBSTITUTIONS.items():
            text = text.replace(docs, tiny)
        with contextlib.redirect_stdout(_Tee(printed, sys.stdout)):
            exec(compile(text, part_where, "exec"), namespace)  # noqa: S102 (the docs' own example)


class _Tee(io.TextIOBase):
    """Writes to both: what a block prints is checked and still shown (``pytest -s``)."""

    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)


def test_the_output_check_can_fail() -> None:  # the control: a wrong count, word or decimal is caught
    page = "active 0 of 4, KL 0.012 nats\nrevived: 4 of 4 (Var(mu) 0.61)"
    assert same_output("active 0 of 4, KL 0.013 nats\nrevived: 4 of 4 (Var(mu) 0.64)\n", page) is None
    for wrong in ("active 1 of 4, KL 0.012 nats\nrevived: 4 of 4 (Var(mu) 0.61)",
                  "active 0 of 4, KL 0.012 nats\nrevive: 4 of 4 (Var(mu) 0.61)",
                  "active 0 of 4, KL 0.012 nats\nrevived: 4 of 4 (Var(mu) 0.71)",
                  "active 0 of 4, KL 0.012 nats"):
        assert same_output(wrong, page) is not None


# ---------------------------------------------------------------------------- bash blocks

SEPARATORS = {"&&", "||", ";", "|", "(", ")", "&"}
LEADERS = {"time", "do", "then", "else", "!"}


def vaescope_commands(code: str) -> list[list[str]]:
    """The arguments of every `vaescope ...` command in a shell text (after ``&&``, ``;``, ``time``,
    ``do``, an environment assignment; with ``\\`` continuations joined and comments dropped)."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(re.sub(r"\$\{?\w+\}?", "1", line), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens, words = list(lexer), []
        for token in [*tokens, ";"]:
            if token not in SEPARATORS:
                words.append(token)
                continue
            while words and (words[0] in LEADERS or re.fullmatch(r"\w+=.*", words[0])):
                words.pop(0)
            if words and words[0] == "vaescope":
                commands.append(words[1:])
            words = []
    return commands


def check_command(args: list[str], where: str = "") -> None:
    """``vaescope ARGS`` names a real command and click parses ARGS (nothing runs)."""
    if not args or args[0].startswith("-"):  # the group's own options: --help, --version
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, f"{where}: `vaescope {' '.join(args)}`: {result.output}"
        return
    command = main.commands.get(args[0])
    assert isinstance(command, click.Command), f"{where}: `vaescope {args[0]}` is not a command"
    result = CliRunner().invoke(main, [args[0], "--help"])
    assert result.exit_code == 0 and "Usage: " in result.output, f"{where}: `vaescope {args[0]} --help` failed"
    if "--help" in args or "-h" in args:
        return
    try:
        command.make_context(f"vaescope {args[0]}", list(args[1:]))
    except click.UsageError as err:
        raise AssertionError(f"{where}: `vaescope {' '.join(args)}`: {err.format_message()}") from None


@pytest.mark.parametrize("where, comments, code", BASH, ids=_ids(BASH))
def test_bash_block_names_real_commands(where, comments, code, tmp_path, monkeypatch, request) -> None:
    directives = _directives(where, comments)
    commands = vaescope_commands(code)
    for args in commands:
        check_command(args, where)
    if "run" in directives:
        assert commands, f"{where}: <!-- docs-test: run --> above a block without a vaescope command"
        _set_up(directives, where, tmp_path, monkeypatch, request)
        for args in commands:
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 0, f"{where}: `vaescope {' '.join(args)}` failed:\n{result.output}"


def test_the_command_check_can_fail() -> None:  # the control: a wrong command or option is caught
    assert vaescope_commands("time vaescope train --epochs 3 \\\n  --out r && X=1 vaescope stats r  # note") == [
        ["train", "--epochs", "3", "--out", "r"], ["stats", "r"]]
    assert vaescope_commands("for S in 0 1; do vaescope train --seed $S; done") == [["train", "--seed", "1"]]
    for wrong in ("vaescope trian --epochs 3", "vaescope train --epoch 3", "vaescope train --epochs ten",
                  "vaescope stats runs/x --split validation", "vaescope sweep --preset dense16"):
        with pytest.raises(AssertionError):
            check_command(vaescope_commands(wrong)[0])


# ---------------------------------------------------------------------------- toml, links, snippets

@pytest.mark.parametrize("where, comments, code", TOML, ids=_ids(TOML))
def test_toml_block_is_a_valid_config(where, comments, code, tmp_path) -> None:
    import tomllib

    path = tmp_path / "config.toml"
    path.write_text(code)
    resolved = config_mod.resolve("dense16", path).to_dict()  # raises VaescopeError on a bad key or value
    for section, values in tomllib.loads(code).items():  # every value the block sets is the config's
        if section == "extends" or not isinstance(values, dict):
            continue
        for key, value in values.items():
            assert resolved[section][key] == (list(value) if isinstance(value, list) else value), (section, key)


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_and_snippets_resolve(page: Path) -> None:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.DOTALL | re.MULTILINE)  # not inside code blocks
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address, or an anchor of this page (mkdocs build --strict checks those)
        assert (page.parent / target.split("#")[0]).exists(), f"{page.relative_to(ROOT)}: broken link {target}"
    readme = (ROOT / "README.md").read_text()
    for name in re.findall(r'^--8<-- "README\.md:([\w-]+)"', text, re.MULTILINE):
        assert f"--8<-- [start:{name}]" in readme and f"--8<-- [end:{name}]" in readme, \
            f"{page.relative_to(ROOT)}: README.md has no section {name} to include"


def test_each_marker_names_one_block() -> None:
    markers = [c for _, comments, _ in PYTHON for c in comments if re.fullmatch(r"[\w-]+-example", c)]
    assert len(markers) == len(set(markers)), f"a marker used twice: {sorted(markers)}"
    assert {"api-example", "own-model-example", "monitor-example", "lightning-example",
            "pythae-example"} <= set(markers)
