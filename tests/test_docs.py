"""The docs site's hooks (docs/hooks/): generated CLI and recipe references, and links to repository files."""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path
from types import ModuleType, SimpleNamespace

import typer

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_hook(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", REPO_ROOT / "docs/hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_page(src_uri: str, abs_src_path: Path | None = None) -> SimpleNamespace:
    return SimpleNamespace(file=SimpleNamespace(src_uri=src_uri, abs_src_path=str(abs_src_path)))


def test_a_new_command_appears_in_the_cli_reference_without_touching_the_docs():
    cli_reference = load_hook("cli_reference")
    app = typer.Typer()
    group = typer.Typer(help="Things to greet.")

    @group.command("hello")
    def hello(
        who: str = typer.Argument(..., help="Whom to greet."),
        loud: bool = typer.Option(False, help="Shout <it> | twice."),
    ):
        """Say hello.  Example: demo greet hello world"""

    @app.command("other")
    def other() -> None:
        """Another command."""

    app.add_typer(group, name="greet")
    text = cli_reference.render_app(app, "demo")
    assert "#### demo greet hello" in text
    assert "demo greet hello [OPTIONS]" in text
    assert "Whom to greet." in text
    assert "| `--loud / --no-loud` | Shout &lt;it&gt; \\| twice.  \\[default: no-loud\\] |" in text  # no tag, no column
    assert text.index("### demo greet") < text.index("#### demo greet hello")


def test_the_cli_reference_holds_every_clipctl_command_and_option():
    from clipctl.cli import app

    text = load_hook("cli_reference").render_cli_reference(REPO_ROOT)
    root = typer.main.get_command(app)
    for name in root.list_commands(None):
        command = root.commands[name]
        assert f"### clipctl {name}\n" in text
        for sub in getattr(command, "commands", {}):
            assert f"#### clipctl {name} {sub}\n" in text
    for option in ("--resume", "--dry-run", "--data-root", "--parallel"):
        assert f"`{option}" in text


def test_the_cli_page_refuses_to_build_without_its_marker():
    cli_reference = load_hook("cli_reference")
    config = {"config_file_path": str(REPO_ROOT / "mkdocs.yml")}
    try:
        cli_reference.on_page_markdown("# CLI reference\n", fake_page("reference/cli.md"), config, None)
    except ValueError as err:
        assert "marker" in str(err)
    else:
        raise AssertionError("a CLI page without the marker built")
    assert cli_reference.on_page_markdown("text", fake_page("guides/data.md"), config, None) == "text"


def test_the_recipe_key_tables_hold_every_key_of_every_section_and_loss():
    from clipctl.losses.registry import key_users
    from clipctl.recipe import Recipe

    text = load_hook("recipe_reference").render_recipe_keys()
    sections = text.split("### [")[1:]
    assert [s.split("]")[0] for s in sections] == list(Recipe.model_fields)
    for section in sections:
        name = section.split("]")[0]
        keys = key_users() if name == "loss" else Recipe.model_fields[name].annotation.model_fields
        for key in keys:
            assert f"| `{key}` |" in section, (name, key)
    assert "| `augment` | bool | `true` |" in text  # defaults as TOML, the way a recipe writes them
    assert "global batch (all processes" in text  # the comment beside the field in the source


def test_a_link_to_a_repository_file_points_at_its_copy_in_the_site(tmp_path):
    repo_files = load_hook("repo_files")
    (tmp_path / "docs/guides").mkdir(parents=True)
    (tmp_path / "bench/results").mkdir(parents=True)
    (tmp_path / "bench/results/table.md").write_text("| a |\n")
    page_path = tmp_path / "docs/guides/page.md"
    config = {"docs_dir": str(tmp_path / "docs"), "config_file_path": str(tmp_path / "mkdocs.yml")}
    markdown = (
        "[t](../../bench/results/table.md) ![p](../../bench/results/table.md) [d](data.md#x) [w](https://x.org/a)"
    )
    out = repo_files.on_page_markdown(markdown, fake_page("guides/page.md", page_path), config, None)
    assert (
        out
        == "[t](../repo/bench/results/table.md) ![p](../repo/bench/results/table.md) [d](data.md#x) [w](https://x.org/a)"
    )


def test_a_link_to_a_missing_repository_file_is_a_warning_that_fails_a_strict_build(tmp_path, caplog):
    repo_files = load_hook("repo_files")
    (tmp_path / "docs").mkdir()
    config = {"docs_dir": str(tmp_path / "docs"), "config_file_path": str(tmp_path / "mkdocs.yml")}
    markdown = "[gone](../bench/results/gone.json)"
    with caplog.at_level(logging.WARNING):
        out = repo_files.on_page_markdown(markdown, fake_page("index.md", tmp_path / "docs/index.md"), config, None)
    assert out == markdown
    assert [r.name for r in caplog.records] == ["mkdocs.hooks.repo_files"]  # under `mkdocs`: strict counts it
    assert "index.md: links to ../bench/results/gone.json, which is not in the repository" in caplog.text


def headings_slugs(markdown: str) -> set[str]:
    """The anchors of a page's headings as GitHub (and the site, through mkdocs.yml's slugify) make them."""
    from pymdownx.slugs import slugify

    slug = slugify(case="lower")
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    return {slug(m.group(1).strip(), "-") for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def test_every_link_of_the_readme_resolves_on_github():
    """MkDocs checks the links inside docs/; the README is outside it, so its links are checked here."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        if re.match(r"^[a-z]+:", link):
            continue
        path, _, anchor = link.partition("#")
        target = REPO_ROOT / path if path else REPO_ROOT / "README.md"
        assert target.is_file(), f"README links to {link}, which does not exist"
        if anchor:
            assert anchor in headings_slugs(target.read_text(encoding="utf-8")), f"README: no heading for {link}"
