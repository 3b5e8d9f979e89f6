"""MkDocs hook (mkdocs.yml ``hooks:``): the committed figures, served from where they live.

The reports' plots and the benchmarks' figures are committed beside the files that make them
(``reports/plots/``, ``pipelines/<suite>/reports/plots/``, ``benchmarks/<name>/``), outside
``docs/``. This hook adds each one to the site as ``figures/<its path in the repository>``, so
a page shows the committed file itself (``![...](../figures/reports/plots/x.png)``) and
``mkdocs build --strict`` checks the link like any other: a figure that is gone fails the build.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[1]
#: the committed figures, as globs under the repository root
FIGURES = ("reports/plots/*.png", "pipelines/*/reports/plots/*.png", "benchmarks/*/*.png")
PREFIX = "figures"


def figures(root: Path = REPO) -> list[Path]:
    """The figure files under ``root`` that the site serves, sorted."""
    return sorted({p for pattern in FIGURES for p in root.glob(pattern) if p.is_file()})


def on_files(files: Files, config) -> Files:
    """Add every committed figure to the site's files as ``figures/<path>``."""
    for path in figures():
        uri = f"{PREFIX}/{path.relative_to(REPO).as_posix()}"
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


# -- the settings tables of the methods' pages ------------------------------------------------
#
# `<!-- settings: admm -->` on a page becomes the table of the registered method's keys under
# `methods.<key>` of params.yaml: each key's default and allowed values, read from the method's
# parameter model (its pydantic `Params`), and the value the default suite runs (params.yaml,
# with tuned/<key>.yaml laid over it, as every stage does). So the table is the code's, never
# typed by hand; an unknown method name fails the build.

SETTINGS = re.compile(r"<!-- settings: ([A-Za-z0-9_]+) -->")


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _value(value: Any) -> str:
    """A value as params.yaml writes it, in one line."""
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        value = value.model_dump(exclude_defaults=True)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if value is None:
        return "null"
    return _number(value)


def _type(annotation: Any) -> str:
    """A type annotation in a few words: ``float``, ``list[float] | null``, ``{a: float}``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join("null" if a is type(None) else _type(a) for a in args)
    if origin in (list, tuple):
        inner = _type(args[0]) if args else "any"
        return f"[{inner}, ...]" if origin is list or ... in args else f"({inner}, {inner})"
    if origin is dict:
        return f"{{{_type(args[0])}: {_type(args[1])}}}"
    name = getattr(annotation, "__name__", str(annotation))
    return "a section" if isinstance(annotation, type) and hasattr(annotation,
                                                                   "model_fields") else name


def _allowed(field: Any) -> str:
    """What a key takes: its type, its bounds, and null where it may be unset."""
    annotation, optional = field.annotation, False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        if len(args) == 1:
            annotation = args[0]
    bounds = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    limits = [f"{sign} {_number(getattr(m, key))}" for m in field.metadata
              for key, sign in bounds.items() if getattr(m, key, None) is not None]
    text = " ".join([_type(annotation), ", ".join(limits)]).strip()
    return f"{text}, or null" if optional else text


def settings_table(name: str, root: Path = REPO) -> str:
    """The markdown table of the registered method ``name``'s own keys (`SETTINGS`)."""
    import yaml

    from sparsebench.methods import METHODS
    from sparsebench.methods.base import MethodParams

    if name not in METHODS:
        raise ValueError(f"settings: {name!r} is not a registered method; known: "
                         f"{', '.join(METHODS)}")
    cls = METHODS[name]
    suite = (yaml.safe_load((root / "params.yaml").read_text()).get("methods") or {}).get(
        name) or {}
    tuned_file = root / "tuned" / f"{name}.yaml"
    tuned = (yaml.safe_load(tuned_file.read_text()) or {}).get("params", {}) if (
        tuned_file.exists()) else {}
    rows = ["| key | default | allowed | default suite |", "|---|---|---|---|"]
    for key, field in cls.Params.model_fields.items():
        if key in MethodParams.model_fields:
            continue  # the keys every method has: the methods' overview page
        here = [f"tuned {_value(v)}" for k, v in tuned.items() if k.split(".")[0] == key]
        if key == "target_sparsity" and cls.strength is None:
            here.append("from each level")  # suite.levels: the level sets a method's targets
        if key == cls.strength:
            here.append(f"calibrated per seed and level (`calibrated/{name}.yaml`)")
        if key in suite:
            here.append(_value(suite[key]) if not here else f"params.yaml {_value(suite[key])}")
        rows.append(f"| `{key}` | {_value(field.get_default())} | {_allowed(field)} | "
                    f"{'; '.join(here) or '(default)'} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace each ``<!-- settings: NAME -->`` with its method's table."""
    return SETTINGS.sub(lambda m: settings_table(m.group(1)), markdown)
