"""Every file and module the docs name exists: a script moved to another folder, or a module renamed, without its
docs fails here instead of leaving a command that cannot run."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(p.relative_to(ROOT).as_posix() for p in [*ROOT.glob("docs/*.md"), ROOT / "README.md"])
# A repository path such as `benchmarks/robustness.py` or `hf_unlearn/tiny/colour.py` (not part of a longer path, so
# an upstream project's `eval-scripts/x.py` is not read as ours).
PATH = re.compile(r"(?<![\w/.-])((?:scripts|benchmarks|hf_unlearn|tests|configs|pipelines)/[\w/.-]*\w\.(?:py|yaml))")
MODULE = re.compile(r"`(hf_unlearn(?:\.\w+)+)")
# Names known to be stale in pages that another change is rewriting, e.g. {"docs/x.md": ["path benchmarks/y.py"]}.
# Each must still be missing, so an entry goes the day its page is fixed.
KNOWN_STALE: dict[str, list[str]] = {}


def _exists(path: str) -> bool:
    # Pages about the package name its benchmark modules relative to it (`benchmarks/world_uce.py`).
    return (ROOT / path).exists() or (ROOT / "hf_unlearn" / path).exists()


def _module_file(parts: list[str]) -> tuple[Path, list[str]]:
    """The file of the longest module prefix of `parts`, and the names after it."""
    for i in range(len(parts), 0, -1):
        for file in (ROOT.joinpath(*parts[:i]).with_suffix(".py"), ROOT.joinpath(*parts[:i], "__init__.py")):
            if file.exists():
                return file, parts[i:]
    raise AssertionError(f"no module for {'.'.join(parts)}")


def _defines(source: str, name: str) -> bool:
    """Whether a module defines or imports `name` at its top level (def, class, assignment, import, `__all__`)."""
    forms = [rf"^(?:async )?def {name}\b", rf"^class {name}\b", rf"^{name}\s*[:=]", rf"^from \S+ import .*\b{name}\b"]
    forms += [rf"^\s+{name},?$", rf"^\s+\"{name}\",?$"]  # the lines of a parenthesised import or of `__all__`
    return any(re.search(form, source, re.M) for form in forms)


def missing_references(text: str) -> list[str]:
    missing = [f"path {p}" for p in PATH.findall(text) if not _exists(p)]
    for name in MODULE.findall(text):
        try:
            file, rest = _module_file(name.split("."))
        except AssertionError:
            missing.append(f"module {name}")
            continue
        # One name after the module (a function, class or constant); a longer tail is an attribute of it.
        if rest and not _defines(file.read_text(), rest[0]):
            missing.append(f"name {name}")
    return missing


@pytest.mark.parametrize("page", PAGES)
def test_docs_name_files_and_modules_that_exist(page):
    missing = missing_references((ROOT / page).read_text())
    stale = KNOWN_STALE.get(page, [])
    assert [m for m in missing if m not in stale] == [], f"{page} names what does not exist: {missing}"
    fixed = [m for m in stale if m not in missing]
    assert not fixed, f"{page} no longer names {fixed}: remove it from KNOWN_STALE"


def test_the_check_sees_a_moved_script_and_a_renamed_module():
    text = "Run `python scripts/robustness.py`; the model is `hf_unlearn.models.tiny_classifier`; eval-scripts/x.py."
    assert missing_references(text) == ["path scripts/robustness.py", "name hf_unlearn.models.tiny_classifier"]
    assert missing_references("`python benchmarks/robustness.py`, `hf_unlearn.tiny.classifiers.RECIPES`") == []
