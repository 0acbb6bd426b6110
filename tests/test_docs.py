"""The documentation site: the README's links, the generated config / CLI / API reference pages,
and the strict MkDocs build (`make docs`): a broken link or anchor, or a page missing from the
nav, fails it."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

import click
import pytest
import typer
import yaml
from pydantic import BaseModel

from fedumm.cli import app
from fedumm.config import PretrainConfig, RunConfig
from fedumm.federation.strategies import STRATEGIES

ROOT = Path(__file__).resolve().parents[1]


def _hooks():
    spec = importlib.util.spec_from_file_location("fedumm_docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        for kind in get_args(field.annotation) or (field.annotation,):
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                keys += _keys(kind, f"{prefix}{name}.")
    return keys


def _commands(group: click.Group, path: str = "") -> dict[str, click.Command]:
    out = {}
    for name, command in group.commands.items():
        out[f"{path}{name}"] = command
        if isinstance(command, click.Group):
            out.update(_commands(command, f"{path}{name} "))
    return out


def test_readme_links_resolve():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert local, "the README links to the documentation"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"
    assert "make demo" in text and "make test" in text and "make docs" in text


def test_config_reference_lists_every_field_and_strategy_parameter():
    page = _hooks().config_reference()
    for key in _keys(RunConfig) + _keys(PretrainConfig):
        assert f"`{key}`" in page, f"config reference misses {key}"
    for name, cls in STRATEGIES.items():
        assert f"`{name}`" in page, f"config reference misses strategy {name}"
        for param, field in cls.Params.model_fields.items():
            key = f"federation.strategy.{param}"
            assert f"`{key}`" in page, f"config reference misses {name}'s {param}"
            if field.description:
                assert " ".join(field.description.split()) in page
    default_lr = RunConfig.model_fields["federation"].default_factory().lr
    assert f"`federation.lr` | float (> 0) | `{default_lr:g}`" in page


def test_cli_reference_lists_every_command_and_option():
    page = _hooks().cli_reference()
    commands = _commands(typer.main.get_command(app))
    assert {"run", "config", "strategies", "flare export", "flower export"} <= commands.keys()
    for name, command in commands.items():
        assert f"## `fedumm {name}`" in page, f"CLI reference misses fedumm {name}"
        for param in command.params:
            shown = (
                param.human_readable_name if isinstance(param, click.Argument) else param.opts[0]
            )
            assert f"`{shown}`" in page, f"CLI reference misses {shown} of fedumm {name}"
        if command.help:
            assert command.help.split("\n")[0].strip() in page
    # an argument's help comes from its typer declaration
    assert "Folder to write (rootCA.pem, site-K.crt/.key)." in page


def test_api_pages_name_existing_modules():
    hooks = _hooks()
    for page in hooks.API_PAGES:
        text = hooks.api_page(page)
        modules = re.findall(r"^::: (\S+)$", text, flags=re.M)
        assert modules, page
        for module in modules:
            assert importlib.util.find_spec(module) is not None, module


class _Loader(yaml.SafeLoader):
    """mkdocs.yml names Python objects (`!!python/name:...`): read them as their names."""


_Loader.add_multi_constructor("tag:yaml.org,2002:python/name:", lambda loader, suffix, node: suffix)


def test_mkdocs_config_is_strict_and_lists_the_generated_pages():
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_Loader)
    assert config["strict"] is True
    assert set(config["validation"].values()) == {"warn"}
    nav = yaml.safe_dump(config["nav"])
    for path in _hooks().GENERATED:
        assert path in nav, f"{path} is generated but not in the nav"


def test_site_builds_strict(tmp_path):
    """`make docs`: every warning (a broken link or anchor, an unlisted page, a docstring the
    API reference cannot render) fails the build."""
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    config_page = (site / "reference" / "config.html").read_text()
    assert "federation.strategy" in config_page
    assert "fedumm flower export" in (site / "reference" / "cli.html").read_text()
    assert (
        "fedumm.federation.server" in (site / "reference" / "api" / "federation.html").read_text()
    )
    assert (site / "results" / "index.html").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
