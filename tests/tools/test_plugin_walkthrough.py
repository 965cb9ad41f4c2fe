"""docs/plugins.md's walk-through, run as written: write, register, test with the kit, benchmark,
break it three ways, exclude it (issue 16: "Done means").

The example plugin (plugins/convengine-correlate) is really installed, with pip, into a
temporary directory put on PYTHONPATH (installing it into the environment would register it in
every other test run); every other command is taken from the document and run in bash from the
repository root, and its output checked.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "plugins.md"
INSTALL = "pip install -e plugins/convengine-correlate"

pytestmark = pytest.mark.slow


def _blocks(marker: str) -> dict[str, str]:
    """``{key: text}`` of the fenced block right after each ``<!-- MARKER key -->`` line."""
    found = {}
    for match in re.finditer(rf"<!-- {marker} (\S+) -->\n```\w*\n(.*?)```", DOC.read_text(), re.DOTALL):
        found[match.group(1)] = match.group(2)
    return found


def _commands(block: str) -> list[str]:
    """The block's shell commands: one per line, a here-document kept with its command."""
    commands, lines = [], iter(block.splitlines())
    for line in lines:
        if not line.strip():
            continue
        command = [line]
        if "<<'EOF'" in line:
            for body in lines:
                command.append(body)
                if body == "EOF":
                    break
        commands.append("\n".join(command))
    return commands


@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    """Runs one command from the document with the example installed; returns (exit code, stdout + stderr)."""
    tmp = tmp_path_factory.mktemp("walkthrough")
    source = tmp / "src"
    shutil.copytree(ROOT / "plugins" / "convengine-correlate", source)  # the build writes into its source
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                             "--target", str(tmp / "site"), str(source)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVENGINE_")}
    paths = [str(tmp / "site")] + ([os.environ["PYTHONPATH"]] if "PYTHONPATH" in os.environ else [])
    env.update(PYTHONPATH=os.pathsep.join(paths), CONVENGINE_CACHE_DIR=str(tmp / "cache"),
               PYTEST_ADDOPTS="-p no:cacheprovider",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))

    def run(command: str) -> tuple[int, str]:
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
        return done.returncode, done.stdout + done.stderr

    return run


def _row(name: str, *cells: str) -> re.Pattern:
    return re.compile(rf"^{re.escape(name)}\s+" + r"\s+".join(map(re.escape, cells)), re.MULTILINE)


def test_the_document_shows_the_example_plugin_as_it_is():
    files = _blocks("walk-through file:")
    assert set(files) == {"plugins/convengine-correlate/convengine_correlate/plugin.py",
                          "plugins/convengine-correlate/tests/test_correlate.py"}
    for path, text in files.items():
        assert text == (ROOT / path).read_text(), f"docs/plugins.md shows an old {path}"


# step -> [(expected exit code, patterns the output must hold, patterns it must not)], one per command
EXPECTED = {
    "register": [
        (0, [_row("correlate", "cpu", "exact", "yes", "correlate")], []),
    ],
    "test": [
        (0, [re.compile(r"\d+ passed")], [re.compile(r"failed|error", re.IGNORECASE)]),
    ],
    "benchmark": [
        (0, [re.compile(r"correlate is \d+(\.\d+)?x slower"), re.compile(r"\(the backend under test\)")], ["0.00x"]),
        (0, [_row("correlate")], []),
        (0, [_row("correlate", "cpu", "exact", "candidate")], []),
    ],
    "break-import": [
        (0, [_row("plugin:correlate"), "plugin failed to import: ImportError: CONVENGINE_CORRELATE_BREAK=import"], []),
        (0, ["chosen:  im2col", "not registered: its plugin 'correlate' failed to import: ImportError"], []),
        (2, ["error: backend 'correlate' (engine policy) is not registered: its plugin 'correlate' failed to import: "
             "ImportError: CONVENGINE_CORRELATE_BREAK=import"], []),
    ],
    "break-prepare": [
        (0, ["<stdin>:9: PluginWarning: backend 'correlate' (correlate) excluded: prepare() raised RuntimeError",
             re.compile(r"^im2col$", re.MULTILINE),
             re.compile(r"^prepare\(\) raised RuntimeError: CONVENGINE_CORRELATE_BREAK=prepare", re.MULTILINE),
             "BackendUnavailableError | not available: prepare() raised RuntimeError"], []),
    ],
    "break-shape": [
        (0, ["BackendFailedError | returned ndarray (1, 16, 31, 32) float32, expected ndarray (1, 16, 32, 32) float32"], []),
        (1, ["FAILED", "test_output_is_a_new_array_of_the_problem_shape_and_dtype"], []),
    ],
    "exclude": [
        (0, [_row("winograd")], [_row("correlate")]),
        (0, ["not registered: its plugin 'correlate' was not loaded: CONVENGINE_LOAD_PLUGINS='winograd' does not name it"],
         []),
        (0, ["PluginWarning: CONVENGINE_LOAD_PLUGINS names 'corelate', which no installed plugin has",
             "correlate (convengine-correlate)"], []),
        (0, [_row("naive")], [_row("correlate"), _row("winograd")]),
    ],
}


@pytest.mark.parametrize("step", list(EXPECTED))
def test_each_step_works_as_written(shell, step):
    if step == "exclude":
        pytest.importorskip("convengine_winograd", reason="the step names the winograd plugin")
    commands = _commands(_blocks("walk-through:")[step])
    if step == "register":
        assert commands[0] == INSTALL  # installed by the fixture, into a temporary directory
        commands = commands[1:]
    assert len(commands) == len(EXPECTED[step]), commands
    for command, (code, present, absent) in zip(commands, EXPECTED[step]):
        rc, output = shell(command)
        assert rc == code, f"{command}\nexit {rc}:\n{output}"
        for pattern in present:
            assert (pattern.search(output) if isinstance(pattern, re.Pattern) else pattern in output), (
                f"{command}\nlacks {pattern}:\n{output}")
        for pattern in absent:
            assert not (pattern.search(output) if isinstance(pattern, re.Pattern) else pattern in output), (
                f"{command}\nholds {pattern}:\n{output}")
