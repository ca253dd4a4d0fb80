"""Command-line options generated from a config dataclass (``minivit train`` from ``TrainConfig``).

Each field of the dataclass is one option, so every default is written once, in the dataclass,
and ``--help`` shows it. The field's ``metadata`` (see ``setting``) adds the help text, the
choices, other spellings (timm's ``train.py`` names) and whether the field belongs to the
recipe (a resumed run must keep it) or only to this process (device, data folder, progress).

    @dataclass
    class Config:
        lr: float = setting(1e-3, "peak learning rate")
        batch_size: int = setting(128, "images per step", aliases=("-b",))

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Config)
    given = given_config_values(parser.parse_args(), Config)   # only the options typed

A field without metadata still gets an option (``--field-name``), typed by its annotation:
``int``, ``float``, ``str``, ``bool`` (``--name/--no-name``), ``X | None``,
``tuple[float, float]`` (two values) and ``dict`` (``KEY=VALUE`` pairs).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

_UNSET = dataclasses.MISSING


def setting(default: Any = _UNSET, help: str = "", *, default_factory: Any = _UNSET,
            choices: tuple | None = None, aliases: tuple[str, ...] = (), flag: str | None = None,
            metavar: str | tuple | None = None, recipe: bool = True, cli: bool = True,
            default_help: str | None = None):
    """A dataclass field with what the command line needs to know about it.

    help: one line for ``--help`` (the default is appended).  choices: the allowed values
    (shown in ``--help`` and checked by the config's ``validate``).  aliases: other option
    strings (e.g. timm's ``--smoothing``).  flag: the main option string when it is not
    ``--field-name``.  recipe: False for a field a resumed run may change (device, data folder,
    progress bars), True for the training recipe, which a resumed run must keep.
    cli: False keeps the field off the command line.  default_help: how ``--help`` shows the
    default when the value itself would mislead (e.g. an output folder named at run time).
    """
    metadata = {"help": help, "choices": choices, "aliases": tuple(aliases), "flag": flag,
                "metavar": metavar, "recipe": recipe, "cli": cli, "default_help": default_help}
    if default_factory is not _UNSET:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def option_name(f: dataclasses.Field) -> str:
    """The main option string of a field: ``--batch-size`` for ``batch_size``."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def is_recipe(f: dataclasses.Field) -> bool:
    return f.metadata.get("recipe", True)


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _strip_optional(tp):
    """``int | None`` -> ``(int, True)``; ``int`` -> ``(int, False)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _origin(tp):
    """``dict`` for ``dict``, ``dict[str, int]`` and ``dict | None``; likewise ``tuple``."""
    base = _strip_optional(tp)[0]
    return typing.get_origin(base) or base


def format_value(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return " ".join(format_value(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={v!r}" for k, v in value.items()) or "none"
    return str(value)


def parse_key_value(text: str, option: str = "--model-arg") -> tuple[str, object]:
    """``"depth=2"`` -> ``("depth", 2)``; a value that is no Python literal stays a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"{option} {text!r}: expected KEY=VALUE, e.g. {option} depth=2")
    try:
        parsed = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        parsed = {"true": True, "false": False}.get(value.strip().lower(), value.strip())
    return key.strip(), parsed


class _KeyValues(argparse.Action):
    """``--model-arg depth=2 --model-arg embed_dim=32`` or timm's ``--model-kwargs depth=2
    embed_dim=32``: KEY=VALUE pairs merged into one dict (parsed later, so that a bad pair
    gets the command's one-line error)."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, self.dest, None) or [])
        items.extend((option_string, v) for v in values)
        setattr(namespace, self.dest, items)


def add_config_arguments(parser, cls) -> None:
    """One option per field of the dataclass ``cls`` (those with ``cli=False`` left out).

    Options default to "not given" (absent from the namespace), so ``given_config_values``
    can tell what was typed from what was not: a config file and a resumed run's saved
    config fill in the rest."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        md = f.metadata
        if not md.get("cli", True):
            continue
        tp = _strip_optional(hints[f.name])[0]
        origin = _origin(tp)
        default = field_default(f)
        shown = md.get("default_help") or format_value(default)
        help_text = (md.get("help") or f.name.replace("_", " ")).replace("%", "%%")
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        names = [option_name(f), *md.get("aliases", ())]
        if md.get("metavar"):
            kw["metavar"] = md["metavar"]
        elif md.get("choices"):
            kw["metavar"] = "{" + ",".join(map(str, md["choices"])) + "}"
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin is dict:
            kw.update(action=_KeyValues, nargs="+")
            kw.setdefault("metavar", "KEY=VALUE")
            help_text += " (repeatable; values are Python literals, else strings)"
        elif origin in (tuple, list):
            args = typing.get_args(tp)
            item = args[0] if args else str
            kw.update(nargs=len(args) if args and Ellipsis not in args else "+", type=item)
        elif tp in (int, float, str):
            kw["type"] = tp
            kw.setdefault("metavar", {int: "N", float: "X", str: None}[tp])
            if kw["metavar"] is None:
                del kw["metavar"]
        else:
            raise TypeError(f"add_config_arguments: field {f.name} has type {tp!r}, which has "
                            f"no command-line form; give it setting(..., cli=False)")
        kw["help"] = f"{help_text} (default: {str(shown).replace('%', '%%')})"
        parser.add_argument(*names, **kw)


def given_config_values(args: argparse.Namespace, cls) -> dict:
    """The fields whose options were given, as config values (``KEY=VALUE`` pairs parsed)."""
    hints = typing.get_type_hints(cls)
    given = {}
    for f in dataclasses.fields(cls):
        if f.name not in vars(args):
            continue
        value = getattr(args, f.name)
        origin = _origin(hints[f.name])
        if origin is dict:
            value = dict(parse_key_value(text, option) for option, text in value)
        elif origin is tuple:
            value = tuple(value)
        given[f.name] = value
    return given


def load_config_file(path: str | Path, cls) -> dict:
    """The settings of a JSON or TOML file (``-c FILE``): a flat table of field names (``-``
    or ``_`` between words), e.g. a run's ``config.json`` or ``lr = 0.002`` in TOML."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"-c {path}: no such file")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            import tomllib  # Python >= 3.11

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ModuleNotFoundError:
        raise ValueError(f"-c {path}: reading TOML needs Python 3.11 or newer (tomllib); "
                         f"use a JSON file") from None
    except ValueError as exc:  # json.JSONDecodeError and tomllib.TOMLDecodeError
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise ValueError(f"-c {path}: not valid {kind} ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"-c {path}: expected a table of settings, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            raise ValueError(f"-c {path}: unknown setting {key!r}; known settings: "
                             f"{', '.join(fields)}")
        if isinstance(value, list) and _origin(hints[name]) is tuple:
            value = tuple(value)
        out[name] = value
    return out
