"""What a packager and a reader outside the repository get: the sdist and the wheel (contents,
metadata, an sdist whose test suite collects), and READMEs whose commands and links hold."""
import configparser
import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import torchblocks as tb

ROOT = Path(__file__).resolve().parents[1]
COPY_IGNORE = shutil.ignore_patterns(
    ".git", "__pycache__", "*.py[cod]", "*.egg-info", "build", "dist", ".hypothesis", ".pytest_cache", ".venv"
)
SDIST_FILES = ["LICENSE", "CHANGELOG.md", "README.md", "README.zh-CN.md", "setup.cfg", "pyproject.toml",
               "torchblocks/py.typed", "docs/design.md", ".ci/run"]


def _config() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    return config


def _source_url() -> str:
    urls = dict(
        line.split(" = ", 1) for line in _config()["metadata"]["project_urls"].strip().splitlines()
    )
    return urls["Source"]


def _build(source: Path, hook: str, out: Path) -> Path:
    """Run setuptools' PEP 517 ``hook`` in ``source`` (offline, as ``python -m build --no-isolation``)."""
    code = "import sys; from setuptools import build_meta as b; print(getattr(b, sys.argv[1])(sys.argv[2]))"
    result = subprocess.run([sys.executable, "-c", code, hook, str(out)], cwd=source, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out / result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """(sdist, wheel, unpacked sdist): the sdist from a copy of this tree, the wheel from the sdist
    (as ``python -m build`` makes them)."""
    work = tmp_path_factory.mktemp("packaging")
    shutil.copytree(ROOT, work / "tree", ignore=COPY_IGNORE)
    out = work / "out"
    out.mkdir()
    sdist = _build(work / "tree", "build_sdist", out)
    # The "data" filter (no links out, no absolute paths) exists from Python 3.10.12 / 3.11.4.
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(sdist) as archive:
        archive.extractall(work / "unpacked", **safe)
    (unpacked,) = (work / "unpacked").iterdir()
    shutil.copytree(unpacked, work / "wheel-source")
    wheel = _build(work / "wheel-source", "build_wheel", out)
    return sdist, wheel, unpacked


def test_version_comes_from_one_place(dists):
    sdist, wheel, _ = dists
    assert _config()["metadata"]["version"] == "attr: torchblocks.__version__"
    assert sdist.name == f"torchblocks-{tb.__version__}.tar.gz"
    assert wheel.name == f"torchblocks-{tb.__version__}-py3-none-any.whl"


def test_sdist_holds_the_tests_their_helpers_and_the_docs(dists):
    sdist, _, unpacked = dists
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    tests = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").rglob("*.py")
             if "__pycache__" not in p.parts}
    assert {"tests/conftest.py", "tests/keras_oracle.py", "tests/reliability_cases.py"} <= tests
    assert not (tests - names), f"missing from the sdist: {sorted(tests - names)}"
    assert not [f for f in SDIST_FILES if f not in names]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert (unpacked / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()


def test_wheel_holds_the_package_typed_and_licensed(dists):
    _, wheel, _ = dists
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        text = archive.read(metadata).decode()
    package = {p.relative_to(ROOT).as_posix() for p in (ROOT / "torchblocks").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert not (package - names), f"missing from the wheel: {sorted(package - names)}"
    assert "torchblocks/py.typed" in names
    assert [n for n in names if re.search(r"\.dist-info/(licenses/)?LICENSE$", n)]
    assert not [n for n in names if n.startswith(("tests/", "docs/", "scripts/"))]
    assert re.search(r"^License(-Expression)?: MIT$", text, re.M)
    assert f"Project-URL: Source, {_source_url()}" in text
    requires = re.findall(r"^Requires-Dist: ([\w-]+)(.*)$", text, re.M)
    assert {"torch", "torchvision", "fvcore", "numpy", "tqdm"} <= {name for name, _ in requires}
    for name, spec in requires:
        if "extra ==" not in spec and name in ("torch", "torchvision"):
            assert ">=" in spec and "<" in spec.replace("<=", ""), (name, spec)


def test_unpacked_sdist_collects_its_tests(dists):
    """Collection only (the full suite runs from the repository): every test module and helper of
    the sdist imports, against the sdist's own torchblocks."""
    _, _, unpacked = dists
    env = {**os.environ, "PYTHONPATH": str(unpacked)}
    where = subprocess.run([sys.executable, "-c", "import torchblocks; print(torchblocks.__file__)"],
                           cwd=unpacked, env=env, capture_output=True, text=True, timeout=300)
    assert Path(where.stdout.strip()).is_relative_to(unpacked), where.stdout + where.stderr
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=unpacked, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    collected = re.search(r"^(\d+) tests? collected", result.stdout, re.M)
    assert collected and int(collected.group(1)) > 100, result.stdout[-1000:]


# --- READMEs ----------------------------------------------------------------------------------------

def _read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def _command_after(text: str, lead: str) -> str:
    """The first ```bash block after the line that starts with ``lead``."""
    match = re.search(rf"^{re.escape(lead)}.*?```bash\n(.*?)```", text, re.M | re.S)
    assert match, lead
    return match.group(1).strip()


def _bash_commands(text: str) -> set:
    return {line.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S)
            for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")}


COMMANDS = [("Run the main job", "运行主任务"), ("Run the tests", "运行测试")]
PATTERNS = [(1, "残差连接"), (2, "批标准化"), (3, "深度可分离卷积")]


@pytest.mark.parametrize("english, chinese", COMMANDS)
def test_chinese_readme_commands_are_the_readme_commands(english, chinese):
    assert _command_after(_read("README.zh-CN.md"), chinese) == _command_after(_read("README.md"), english)


def test_chinese_readme_has_no_command_of_its_own():
    assert _bash_commands(_read("README.zh-CN.md")) <= _bash_commands(_read("README.md"))


def test_ci_runs_the_readme_test_command():
    lines = [line for line in _read(".ci/run").splitlines() if line.strip() and not line.startswith("#")]
    assert lines[-1] == _command_after(_read("README.md"), "Run the tests")


@pytest.mark.parametrize("name", ["README.md", "README.zh-CN.md"])
def test_readme_links_work_outside_the_repository(name):
    """PyPI shows README.md without the repository: every link is absolute, and those into the
    repository name files that exist."""
    text = _read(name)
    targets = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r"^\[[^\]]+\]:\s*(\S+)", text, re.M)
    assert targets
    for target in targets:
        assert target.startswith("https://"), target
        if target.startswith(_source_url() + "/blob/main/"):
            assert (ROOT / target.split("/blob/main/", 1)[1]).is_file(), target
    if name == "README.md":
        assert "Deep Learning with Python" in text and "François Chollet" in text
        assert "--index-url https://download.pytorch.org/whl/cpu" in text


def test_chinese_readme_examples_run():
    """The Python blocks of README.zh-CN.md run and print what their comments say."""
    out = io.StringIO()
    for block in re.findall(r"```python\n(.*?)```", _read("README.zh-CN.md"), re.S):
        with contextlib.redirect_stdout(out):
            exec(compile(block, "README.zh-CN.md", "exec"), {})
    printed = out.getvalue()
    for expected in ("8896 73856", "torch.Size([2, 128, 16, 16])", "torch.Size([1, 10])", "38949"):
        assert expected in printed

@pytest.mark.parametrize("number, term", PATTERNS)
def test_chinese_readme_names_the_patterns_in_the_text_s_terms(number, term):
    assert re.search(rf"^### {number}\. {term}$", _read("README.zh-CN.md"), re.M)
