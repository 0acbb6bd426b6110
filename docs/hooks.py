"""MkDocs hooks: the reference pages that are generated from the code at build time.

Nothing here is written twice: the config reference walks the pydantic schema
(`fedumm.config.RunConfig`, `PretrainConfig`) and each registered strategy's parameters, the CLI
reference walks the typer app (`fedumm.cli:app`) through click, and the API pages are
mkdocstrings directives over the modules found in each core package. `on_files` adds them as
generated pages (no file on disk); a page may embed a generated table with a marker such as
`<!-- fedumm:strategies -->` (see MARKERS).

The functions are importable without MkDocs (tests/test_docs.py checks their output).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types
import typing
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel

# ---------------------------------------------------------------------------------------------
# Config reference: any pydantic model, walked field by field
# ---------------------------------------------------------------------------------------------


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds directly (X, X | None), not inside containers."""
    kinds = get_args(annotation) if _is_union(annotation) else (annotation,)
    return [k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)]


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (typing.Union, types.UnionType)


def type_text(annotation: Any) -> str:
    """A reader's name for a field's type: `int`, `list of str`, `"a", "b" or null`."""
    if annotation is type(None) or annotation is None:
        return "null"
    if annotation is Any:
        return "any"
    origin = get_origin(annotation)
    if origin is Literal:
        return ", ".join(f"`{yaml_value(v)}`" for v in get_args(annotation))
    if _is_union(annotation):
        parts = [type_text(a) for a in get_args(annotation)]
        return ", ".join(parts[:-1]) + " or " + parts[-1]
    if origin in (list, tuple, set, frozenset):
        args = [a for a in get_args(annotation) if a is not Ellipsis]
        return f"list of {type_text(args[0])}" if args else "list"
    if origin is dict:
        key, value = get_args(annotation) or (Any, Any)
        return f"map of {type_text(key)} to {type_text(value)}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if origin is typing.Annotated:
        return type_text(get_args(annotation)[0])
    return getattr(annotation, "__name__", str(annotation))


_BOUNDS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))


def constraint_text(field) -> str:
    """The field's numeric bounds and minimum length, as `≥ 0, < 1`."""
    out = []
    for item in field.metadata:
        for attr, sign in _BOUNDS:
            value = getattr(item, attr, None)
            if value is not None:
                out.append(f"{sign} {value:g}" if isinstance(value, float) else f"{sign} {value}")
        if getattr(item, "min_length", None) is not None:
            out.append(f"at least {item.min_length} item{'s' if item.min_length != 1 else ''}")
    return ", ".join(out)


def yaml_value(value: Any) -> str:
    """A value as it is written in a YAML config (`null`, `true`, `[vqa]`, `0.003`)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("\n...").strip()


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def field_rows(model: type[BaseModel], prefix: str = "", anchors: str = "") -> list[dict[str, str]]:
    """One row per field of `model`: key (dotted under `prefix`), type, default, description."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        sections = _models_in(field.annotation)
        if sections:
            default = field.get_default(call_default_factory=True)
            shown = "null" if default is None else f"[below](#{anchors}{_anchor(key)})"
        else:
            shown = f"`{_cell(yaml_value(field.get_default(call_default_factory=True)))}`"
        kind = type_text(field.annotation)
        bounds = constraint_text(field)
        rows.append(
            {
                "key": key,
                "type": f"{kind} ({bounds})" if bounds else kind,
                "default": shown,
                "description": field.description or "",
            }
        )
    return rows


def _anchor(key: str) -> str:
    return key.replace(".", "-").replace("_", "-")


def _table(rows: list[dict[str, str]]) -> list[str]:
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| `{r['key']}` | {_cell(r['type'])} | {r['default']} | {_cell(r['description'])} |"
        )
    return lines


def model_reference(
    model: type[BaseModel], prefix: str = "", level: int = 3, anchors: str = ""
) -> list[str]:
    """Markdown for a pydantic model: a table of its fields, then one heading per sub-model
    (anchors: a prefix that keeps two schemas' headings apart on one page)."""
    lines = [*_table(field_rows(model, prefix, anchors)), ""]
    for name, field in model.model_fields.items():
        for section in _models_in(field.annotation):
            key = f"{prefix}{name}"
            lines.append(f"{'#' * level} `{key}` {{#{anchors}{_anchor(key)}}}")
            lines.append("")
            doc = inspect.getdoc(section) if section.__doc__ else ""
            summary = field.description or ""
            if doc and doc != inspect.getdoc(BaseModel):
                summary = f"{summary} {doc}".strip()
            if _has_none(field.annotation):
                summary += " May be `null`."
            if summary:
                lines += [_cell(summary), ""]
            lines += model_reference(section, f"{key}.", min(level + 1, 6), anchors)
    return lines


def _has_none(annotation: Any) -> bool:
    return _is_union(annotation) and type(None) in get_args(annotation)


def strategy_rows() -> list[dict[str, Any]]:
    """Each registered strategy (`fedumm.federation.strategies.STRATEGIES`): its name, paper
    and parameters, the fields of its `Params` (a pydantic model), as rows of `field_rows`."""
    from fedumm.federation.strategies import STRATEGIES

    out = []
    for name, cls in STRATEGIES.items():
        params = cls.Params
        if not (isinstance(params, type) and issubclass(params, BaseModel)):
            raise TypeError(f"strategy {name!r}: Params is not a pydantic model: {params!r}")
        rows = field_rows(params, "federation.strategy.")
        out.append(
            {
                "name": name,
                "paper": getattr(cls, "paper", ""),
                "params": rows,
                "compresses": cls.compresses,
            }
        )
    return out


def strategies_table() -> str:
    """A table of every registered strategy and its parameters with their defaults."""
    lines = ["| name | paper | parameters (default) |", "|---|---|---|"]
    for s in strategy_rows():
        params = ", ".join(
            f"`{p['key'].rpartition('.')[2]}` ({p['default'].strip('`')})" for p in s["params"]
        )
        lines.append(f"| `{s['name']}` | {_cell(s['paper'])} | {params or '-'} |")
    return "\n".join(lines)


def strategies_reference(level: int = 3) -> list[str]:
    """One heading per strategy with the table of its parameters."""
    lines = []
    for s in strategy_rows():
        name = s["name"]
        lines += [f"{'#' * level} `{name}` {{#strategy-{_anchor(name)}}}", ""]
        if s["paper"]:
            lines += [f"{_cell(s['paper'])}. Set with `federation.strategy.name: {name}`.", ""]
        lines += [f"Compressed (`federation.compression`): {_cell(s['compresses'])}.", ""]
        if s["params"]:
            lines += [*_table(s["params"]), ""]
        else:
            lines += ["No parameters.", ""]
    return lines


def config_reference() -> str:
    from fedumm.config import PretrainConfig, RunConfig, annotated_defaults

    lines = [
        "# Config reference",
        "",
        "Generated at build time from the pydantic schema in `fedumm.config` (`RunConfig`,",
        "`PretrainConfig`) and from the strategy registry (`fedumm.federation.strategies`):",
        "the descriptions and defaults below are the code's. `fedumm config` prints the same",
        "keys as a YAML file (`fedumm config --pretrain` for pretraining). An unknown key, a",
        "wrong type or a value outside its bounds is refused before any work starts, naming the",
        "key. Any key can be set on the command line with `--set dotted.key=value` (values",
        "parse as YAML).",
        "",
        "## Run config {#run-config}",
        "",
        "What `fedumm run`, `sweep`, `bench`, `partition`, `eval`, `flare export` and",
        "`flower export` read.",
        "",
        *model_reference(RunConfig, "", 3),
        "## Strategy parameters {#strategy-parameters}",
        "",
        "The algorithm is `federation.strategy.name`; its parameters are set beside it as",
        "`federation.strategy.<key>` (`fedumm strategies` lists them). A parameter the chosen",
        "algorithm does not use is refused.",
        "",
        strategies_table(),
        "",
        *strategies_reference(3),
        "## Pretraining config {#pretraining-config}",
        "",
        "What `fedumm pretrain` reads.",
        "",
        *model_reference(PretrainConfig, "", 3, "pretrain-"),
        "## The defaults as YAML",
        "",
        "What `fedumm config` prints: a valid config file holding every default.",
        "",
        '??? example "fedumm config"',
        "",
        "    ```yaml",
        *("    " + line for line in annotated_defaults(RunConfig).splitlines()),
        "    ```",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI reference: the typer app through click
# ---------------------------------------------------------------------------------------------


def _cli():
    import click
    import typer

    from fedumm.cli import app

    return typer.main.get_command(app), click


def _argument_help(command) -> dict[str, str]:
    """Help of a command's arguments, read from the typer declarations (click 8.3+ drops the
    help typer passes to an Argument, so the click object holds None)."""
    from typer.utils import get_params_from_function

    function = getattr(command.callback, "__wrapped__", None)
    if function is None:
        return {}
    return {
        name: info.default.help or ""
        for name, info in get_params_from_function(function).items()
        if getattr(info.default, "help", None)
    }


def _commands(group, click, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out = []
    for name in sorted(group.commands):
        command = group.commands[name]
        if command.hidden:
            continue
        out.append(((*path, name), command))
        if isinstance(command, click.Group):
            out += _commands(command, click, (*path, name))
    return out


def _param_row(param, click, argument_help: dict[str, str]) -> str:
    if isinstance(param, click.Argument):
        name = f"`{param.human_readable_name}`"
        help_text = getattr(param, "help", None) or argument_help.get(param.name, "")
    else:
        names = list(param.opts) + list(param.secondary_opts)
        name = " / ".join(f"`{n}`" for n in names)
        help_text = param.help or ""
    if getattr(param, "is_flag", False):
        kind = "flag"
        if not param.required:
            return f"| {name} | flag | {'on' if param.default else 'off'} | {_cell(help_text)} |"
    else:
        kind = param.type.name.replace("integer range", "integer")
        if getattr(param, "multiple", False):
            kind += ", repeatable"
    if param.required:
        default = "required"
    elif param.default is None or getattr(param, "multiple", False) and not param.default:
        default = "-"
    else:
        default = f"`{param.default}`"
    return f"| {name} | {_cell(kind)} | {default} | {_cell(help_text)} |"


def cli_reference() -> str:
    root, click = _cli()
    root_ctx = click.Context(root, info_name="fedumm")
    lines = [
        "# CLI reference",
        "",
        "Generated at build time from the typer app (`fedumm.cli:app`): each command's help is",
        "its docstring, each option's its declaration. `fedumm COMMAND --help` prints the same.",
        "",
        inspect.cleandoc(root.help or ""),
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    found = _commands(root, click)
    for path, command in found:
        lines.append(
            f"| [`fedumm {' '.join(path)}`](#{_anchor('-'.join(path))}) | "
            f"{_cell(command.get_short_help_str(limit=200))} |"
        )
    lines.append("")
    contexts = {(): root_ctx}
    for path, command in found:
        ctx = click.Context(command, info_name=path[-1], parent=contexts[path[:-1]])
        contexts[path] = ctx
        lines += [f"## `fedumm {' '.join(path)}` {{#{_anchor('-'.join(path))}}}", ""]
        lines += ["```text", command.get_usage(ctx), "```", ""]
        lines += [inspect.cleandoc(command.help or ""), ""]
        if isinstance(command, click.Group):
            subs = ", ".join(
                f"[`{name}`](#{_anchor('-'.join((*path, name)))})"
                for name in sorted(command.commands)
            )
            lines += [f"Commands: {subs}.", ""]
        params = [p for p in command.params if not getattr(p, "hidden", False)]
        if params:
            argument_help = _argument_help(command)
            lines += ["| argument or option | type | default | description |", "|---|---|---|---|"]
            lines += [_param_row(p, click, argument_help) for p in params]
            lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# API reference: mkdocstrings directives over the core packages' modules
# ---------------------------------------------------------------------------------------------

# page -> (title, what it covers, modules: a package name expands to it and all its modules)
API_PAGES = {
    "config": ("Config", "The YAML schemas and their loading.", ["fedumm.config"]),
    "run": (
        "Run",
        "The recipe `fedumm run` executes, in phases, the parts and clients a run builds, and"
        " the typed results.json it writes.",
        ["fedumm.recipe", "fedumm.parts", "fedumm.clients", "fedumm.results"],
    ),
    "federation": (
        "Federation",
        "The round loop, the client side, update validation, secure aggregation and"
        " compressed messages.",
        [
            "fedumm.federation",
            "fedumm.federation.server",
            "fedumm.federation.client",
            "fedumm.federation.update",
            "fedumm.federation.secure_aggregation",
            "fedumm.federation.compression*",
        ],
    ),
    "strategies": (
        "Strategies",
        "The FL algorithms: the `Strategy` interface and one module per algorithm.",
        ["fedumm.federation.strategies*"],
    ),
    "models": (
        "Models",
        "The built-in unified model, LoRA, Hugging Face families.",
        ["fedumm.models*"],
    ),
    "data": (
        "Data",
        "ShapesWorld, partitioners, modality scenarios, data set loaders.",
        ["fedumm.data*"],
    ),
    "engines": (
        "Engines",
        "Where clients run: embedded, NVIDIA FLARE, Flower.",
        ["fedumm.engines*"],
    ),
    "evaluation": (
        "Evaluation",
        "VQA accuracy, GenEval scoring, classification metrics.",
        ["fedumm.evaluation*"],
    ),
}


def api_modules(spec: str) -> list[str]:
    """`pkg*` is the package and every module in it (one level, sorted); else `spec` itself."""
    if not spec.endswith("*"):
        return [spec]
    package = spec[:-1]
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ModuleNotFoundError(f"no package {package}")
    names = sorted(m.name for m in pkgutil.iter_modules(found.submodule_search_locations))
    return [package] + [f"{package}.{n}" for n in names if not n.startswith("_")]


def api_page(page: str) -> str:
    title, what, specs = API_PAGES[page]
    lines = [f"# {title}", "", f"{what} Generated from the docstrings by mkdocstrings.", ""]
    for spec in specs:
        for module in api_modules(spec):
            lines += [f"::: {module}", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# MkDocs hooks
# ---------------------------------------------------------------------------------------------

GENERATED = {
    "reference/config.md": config_reference,
    "reference/cli.md": cli_reference,
    **{f"reference/api/{page}.md": (lambda page=page: api_page(page)) for page in API_PAGES},
}

# a page may hold these markers; the build replaces each with the generated text
MARKERS = {"<!-- fedumm:strategies -->": strategies_table}


def on_files(files, config):
    from mkdocs.structure.files import File

    for path, make in GENERATED.items():
        files.append(File.generated(config, path, content=make()))
    return files


def on_page_markdown(markdown, page, config, files):
    for marker, make in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
