"""MkDocs hook: links from the docs to repository files outside `docs/` (bench results, plots) work in both places.

The pages link such files by their relative path in the repository (`../../bench/results/study/compare.md`), which
is what GitHub resolves. MkDocs only knows files under `docs/`, so this hook copies every linked repository file
into the site under `repo/` (as a static file, never rendered) and points the link there. A link to a repository
file that does not exist is a warning, so `mkdocs build --strict` fails on it as on any broken docs link.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.repo_files")

SITE_FOLDER = "repo"
# a Markdown link or image target: ](target) or ](target "title"); a target with a scheme or an anchor only is left
LINK = re.compile(r"(\]\()([^)\s#]+)((?:#[^)\s]*)?(?:\s+\"[^\"]*\")?\))")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


class RepoFile(File):
    """A repository file served as it is: even a `.md` result table is copied, not rendered as a page."""

    def is_documentation_page(self) -> bool:
        return False

    def is_static_page(self) -> bool:
        return False


def on_files(files: Files, config: Any) -> Files:
    """Add every repository file that a page links outside `docs/` to the site, under `repo/`."""
    docs_dir = Path(config["docs_dir"]).resolve()
    repo_root = Path(config["config_file_path"]).resolve().parent
    for page_file in files.documentation_pages():
        if page_file.abs_src_path is None:
            continue
        for target in _outside_targets(Path(page_file.abs_src_path), page_file.content_string, docs_dir, repo_root):
            src_uri = f"{SITE_FOLDER}/{target.relative_to(repo_root).as_posix()}"
            if files.get_file_from_path(src_uri) is None:
                files.append(RepoFile.generated(config, src_uri, abs_src_path=str(target)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Point each link to a repository file at its copy under `repo/`; warn about one that does not exist."""
    docs_dir = Path(config["docs_dir"]).resolve()
    repo_root = Path(config["config_file_path"]).resolve().parent
    page_path = Path(page.file.abs_src_path)

    def relink(match: re.Match[str]) -> str:
        target = _outside_target(page_path, match.group(2), docs_dir, repo_root)
        if target is None:
            return match.group(0)
        if not target.is_file():
            log.warning("%s: links to %s, which is not in the repository", page.file.src_uri, match.group(2))
            return match.group(0)
        site_path = f"{SITE_FOLDER}/{target.relative_to(repo_root).as_posix()}"
        new = posixpath.relpath(site_path, posixpath.dirname(page.file.src_uri) or ".")
        return f"{match.group(1)}{new}{match.group(3)}"

    return LINK.sub(relink, markdown)


def _outside_targets(page_path: Path, markdown: str, docs_dir: Path, repo_root: Path) -> list[Path]:
    targets = [_outside_target(page_path, m.group(2), docs_dir, repo_root) for m in LINK.finditer(markdown)]
    return [t for t in targets if t is not None and t.is_file()]


def _outside_target(page_path: Path, link: str, docs_dir: Path, repo_root: Path) -> Path | None:
    """The repository file a relative link names when it leaves `docs/` (None for links inside docs or URLs)."""
    if SCHEME.match(link) or link.startswith("/"):
        return None
    target = (page_path.parent / link).resolve()
    if target.is_relative_to(docs_dir) or not target.is_relative_to(repo_root):
        return None
    return target
