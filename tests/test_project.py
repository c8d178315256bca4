"""Project-level promises: README quick start, CI script, Dockerfile, requirements, the test tree."""

import re
import subprocess
from pathlib import Path

from _helpers.paths import REPO


def _quick_start_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", section, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_readme_has_space_front_matter():
    text = (REPO / "README.md").read_text()
    assert text.startswith("---\n")
    front = text.split("---\n")[1]
    assert "sdk: gradio" in front and "app_file: app.py" in front


def test_quick_start_is_exactly_two_commands_and_ci_runs_the_second():
    cmds = _quick_start_commands()
    assert len(cmds) == 2, cmds
    run_cmd, test_cmd = cmds
    assert "app.py" in run_cmd or "pengwin_demo" in run_cmd
    assert "pytest" in test_cmd
    ci = (REPO / ".ci" / "run").read_text()
    # CI installs the same requirements and runs the same pytest invocation
    for part in test_cmd.split("&&"):
        assert part.strip() in ci, f"{part.strip()!r} not in .ci/run"


def test_ci_treats_no_tests_collected_as_success(tmp_path):
    ci = (REPO / ".ci" / "run").read_text()
    assert 'rc" -eq 5' in ci
    # and a failing test fails the script: the exit code is passed through
    assert ci.rstrip().endswith('exit "$rc"')
    out = subprocess.run(["bash", "-n", str(REPO / ".ci" / "run")], capture_output=True)
    assert out.returncode == 0, out.stderr


def test_dockerfile_installs_requirements_and_serves_app_on_7860():
    text = (REPO / "Dockerfile").read_text()
    assert "pip install -r requirements.txt" in text
    assert "pip install --no-deps ." in text  # the package: console scripts, bundled models
    assert "EXPOSE 7860" in text and "GRADIO_SERVER_PORT=7860" in text
    assert 'CMD ["python", "app.py"]' in text
    assert "python -m watcher" in text  # the other documented command


def test_requirements_pin_compatible_torch_and_nnunet():
    reqs = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            reqs[name.lower()] = version
    assert reqs["nnunetv2"].startswith("2.8")
    assert not reqs["torch"].startswith("2.9")  # nnunetv2 2.8.x excludes torch 2.9.x
    for needed in ("simpleitk", "pydicom", "connected-components-3d", "edt", "scikit-fmm",
                   "trimesh", "gradio", "watchdog", "highdicom", "pylibjpeg-openjpeg"):
        assert needed in reqs, needed


def test_the_repository_speaks_only_of_the_software():
    # written so that these lines do not match themselves
    pattern = re.compile(r"gpu[._ -]leas[e]|this\s+workplace|device\s+time|lent\s+gpu|\bleas[e]\b|"
                         r"issue\s+#\d|DESIGN\.md", re.I)
    suffixes = {".py", ".md", ".sh", ".toml", ".txt", ".cfg", ".yml", ".yaml", ".service"}
    skip = {".git", "__pycache__", "build", ".pytest_cache"}
    found = []
    for path in REPO.rglob("*"):
        if skip & set(path.relative_to(REPO).parts) or not path.is_file():
            continue
        if path.suffix in suffixes or path.name in ("Dockerfile", "run"):
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if pattern.search(line):
                    found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()[:80]}")
    assert not found, "\n".join(found)


def _imported_modules(path: Path) -> set[str]:
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_no_test_or_benchmark_imports_a_test_module_or_a_benchmark():
    bad = []
    for path in sorted([*(REPO / "tests").rglob("*.py"), *(REPO / "benchmarks").glob("*.py")]):
        for name in _imported_modules(path):
            top = name.split(".")[0]
            if top.startswith(("test_", "bench_", "conftest")) or top in ("tests", "benchmarks"):
                bad.append(f"{path.relative_to(REPO)} imports {name}")
    assert not bad, "\n".join(bad)


def _test_folders() -> list[Path]:
    return sorted(p for p in (REPO / "tests").iterdir()
                  if p.is_dir() and not p.name.startswith(("_", ".")))


def test_test_folders_mirror_the_package_and_the_front_ends():
    # tests/<name>/ tests pengwin_demo/<name>/, or a front end (the watcher package, app.py);
    # the top-level modules of pengwin_demo and the project-wide checks are tested in tests/
    unmatched = [p.name for p in _test_folders()
                 if not ((REPO / "pengwin_demo" / p.name / "__init__.py").is_file()
                         or (REPO / p.name / "__init__.py").is_file()
                         or (REPO / f"{p.name}.py").is_file())]
    assert not unmatched, f"test folders that name no part of the project: {unmatched}"


def test_test_modules_have_unique_names_and_no_package_files():
    # pytest's default import mode imports each test module by its file name, with its
    # folder on sys.path: two test_x.py in different folders would clash, and an
    # __init__.py would turn tests/dicom/ into a package named like the real ones
    modules = sorted((REPO / "tests").rglob("test_*.py"))
    names = [p.name for p in modules]
    assert len(modules) > 40
    assert len(set(names)) == len(names), sorted({n for n in names if names.count(n) > 1})
    inits = [p.relative_to(REPO).as_posix() for d in _test_folders() for p in d.rglob("__init__.py")]
    assert not inits and not (REPO / "tests" / "__init__.py").exists(), inits


_TEST_REFERENCE = re.compile(r"\btests/((?:\w+/)*test_\w+\.py)(?:::(\w+))?")


def test_test_files_named_in_docs_and_code_exist():
    texts = [REPO / "README.md", *(REPO / "docs").rglob("*.md"), *(REPO / "pengwin_demo").rglob("*.py"),
             *(REPO / "watcher").rglob("*.py"), *(REPO / "tests").rglob("*.py")]
    missing = []
    for path in texts:
        for rel, test in _TEST_REFERENCE.findall(path.read_text()):
            target = REPO / "tests" / rel
            if not target.is_file() or (test and f"def {test}(" not in target.read_text()):
                missing.append(f"{path.relative_to(REPO)}: tests/{rel}{'::' + test if test else ''}")
    assert not missing, "\n".join(missing)


# "commit" followed (within a few words, line breaks included) by a hash-like token: hex,
# 7-40 long, with a digit and a letter (so numbers and words like "defaced" are not taken)
_CITED_COMMIT = re.compile(r"\bcommit\b[^.]{0,30}?\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])([0-9a-f]{7,40})\b",
                           re.I)
_GITHUB_REPO = re.compile(r"https?://github\.com/([\w.-]+/[\w.-]+)")


def _is_commit_of_this_repository(sha: str) -> bool:
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "-q", "--verify", f"{sha}^{{commit}}"],
                         capture_output=True)
    return out.returncode == 0


def _names_external_repository(paragraph: str, linked_repos: set[str]) -> bool:
    """A URL in the paragraph, or an owner/name that the page links to on GitHub."""
    return "://" in paragraph or any(name in paragraph for name in linked_repos)


def test_docs_cite_commits_only_of_external_repositories():
    # A commit hash in the user documentation is a citation of a third-party source (which
    # the paragraph names), never a pointer into this repository's own history.
    found = []
    for path in sorted((REPO / "docs").rglob("*.md")):
        text = path.read_text()
        linked = set(_GITHUB_REPO.findall(text))
        for paragraph in re.split(r"\n\s*\n", text):
            for sha in _CITED_COMMIT.findall(paragraph):
                if _is_commit_of_this_repository(sha) or not _names_external_repository(paragraph, linked):
                    found.append(f"{path.relative_to(REPO)}: commit {sha}")
    assert not found, "\n".join(found)
