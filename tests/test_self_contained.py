"""A clone of the repository alone must install, demo and pass its tests.

The team keeps shared material (the design notes, the published vectors) in a folder beside
the repository; nothing tracked here may reach for it, or for anything else outside the clone.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SELF = "tests/test_self_contained.py"
# A path that leaves the repository for the team's shared folder: a relative or absolute path
# through it (also in Markdown links), or a string literal naming it, as in `ROOT.parent /
# "shared"`, `Path("..", "shared")` or `"shared/vectors"`.
OUTSIDE = re.compile(
    r"\.\./shared\b|/work/shared\b|parents\[\d+\]\.parent|['\"]shared(/[^'\"]*)?['\"]"
)
# `Path(__file__).parents[N]`: above the repository root when N is more than the number of
# folders the file is in (parents[depth] is the root itself).
FILE_PARENTS = re.compile(r"__file__\)(?:\.resolve\(\))?\.parents\[(\d+)\]")


def tracked() -> list[str]:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing is tracked")
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return [name for name in listing.stdout.split("\0") if name]


def text_of(name: str) -> str | None:
    """A tracked file's text; None for binary files, which name no paths."""
    try:
        return (ROOT / name).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


def test_nothing_reads_outside_the_repository() -> None:
    offenders = []
    for name in tracked():
        text = None if name == SELF else text_of(name)
        depth = name.count("/")
        for number, line in enumerate((text or "").splitlines(), 1):
            climbs = any(int(n) > depth for n in FILE_PARENTS.findall(line))
            if OUTSIDE.search(line) or climbs:
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert offenders == []


def test_no_tracked_link_points_outside() -> None:
    # A symlink to the shared folder would pass here and be dangling in a clone.
    links = [name for name in tracked() if (ROOT / name).is_symlink()]
    outside = [name for name in links if not (ROOT / name).resolve().is_relative_to(ROOT)]
    assert outside == []


def test_published_vectors_are_tracked() -> None:
    # Tracked, not only present: an untracked copy passes here and is missing from a clone.
    names = set(tracked())
    for name in ("payment_crypto.json", "emv.json"):
        assert f"tests/vectors/{name}" in names, name


# A Markdown link's target: `[text](target)` or `![alt](target)`, outside code.
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def anchors_of(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as
    hyphens, a repeated one numbered."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", markdown), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        if count:
            seen[f"{slug}-{count}"] = 1
    return set(seen)


def test_every_relative_link_in_the_readme_and_docs_resolves() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        text = CODE_SPAN.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not ours to check
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.is_file():
                broken.append(f"{page.relative_to(ROOT)}: {target}: no such file")
            elif anchor and file.suffix == ".md" and anchor not in anchors_of(file.read_text()):
                broken.append(f"{page.relative_to(ROOT)}: {target}: no such heading")
    assert broken == []
