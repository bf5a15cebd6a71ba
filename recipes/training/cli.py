"""One config system for every script entry point: OmegaConf over the tool's typed dataclass.

    python <tool>.py [key=value ...] [--dry-run] [-h]

Why: the trainer (recipes/ript_cfg.py, recipes/training/config.py) already reads dotted
`key=value` overrides over a typed schema; the tools and benchmarks read theirs the same
way, so one syntax, one error style and one `--dry-run` serve them all. Lists are written
`key=[1,2,3]`, booleans `key=true`, null `key=null`. An unknown key or a bad value prints
ONE `config error: ...` line on stderr and exits 2; `--dry-run` prints the resolved,
validated config as YAML and stops before the tool builds or writes anything.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import sys
import textwrap
import tokenize
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import ConfigError, exit_config_error, one_line_error

T = TypeVar("T")
R = TypeVar("R")


def parse_config(cls: type[T], argv: Sequence[str]) -> T:
    """`cls`'s defaults <- `key=value` overrides, type-checked by OmegaConf; raises ConfigError (one line)."""
    overrides = list(argv)
    for o in overrides:
        if o.startswith("-"):
            raise ConfigError(f"unknown flag '{o}': write settings as key=value (e.g. {_example(cls)}); "
                              f"the only flags are --dry-run and -h")
        if "=" not in o or o.startswith("="):
            raise ConfigError(f"argument '{o}' is not key=value: write it like {_example(cls)}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), OmegaConf.from_dotlist(overrides))
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise ConfigError(one_line_error(e, schema="run with -h for the keys", fix="fix the override")) from e
    except Exception as e:  # the dotlist itself did not parse (YAML)
        raise ConfigError(f"cannot parse {overrides} ({str(e).splitlines()[0]}): write key=value, lists as key=[1,2]") from e


def load_config_or_exit(cls: type[T], argv: Sequence[str] | None = None, validate: Callable[[T], None] | None = None) -> T:
    """argv (default sys.argv[1:]) parsed into `cls` and validated, or one `config error:` line and exit 2."""
    try:
        cfg = parse_config(cls, sys.argv[1:] if argv is None else argv)
        if validate is not None:
            validate(cfg)
        return cfg
    except ConfigError as e:
        exit_config_error(e)


def run_cli(cls: type[T], main_fn: Callable[[T], R], argv: Sequence[str] | None = None,
            validate: Callable[[T], None] | None = None, description: str = "") -> R | None:
    """Parse and validate argv into `cls`, then run `main_fn(cfg)`.

    `--dry-run` prints the config as YAML and returns None before `main_fn`; `-h` prints the
    keys and returns None. A ConfigError from parsing, `validate` or `main_fn` is one stderr line
    and exit code 2.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print(help_text(cls, description))
        return None
    cfg = load_config_or_exit(cls, [a for a in argv if a != "--dry-run"], validate)
    if "--dry-run" in argv:
        print(to_yaml(cfg), end="")
        return None
    try:
        return main_fn(cfg)
    except ConfigError as e:
        exit_config_error(e)


def to_yaml(cfg: Any) -> str:
    """A tool's resolved config as YAML: what --dry-run prints."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dotlist(cfg: Any) -> list[str]:
    """`cfg` as `key=value` arguments that parse back to it: how a tool hands its config to a child process."""
    return [f"{f.name}={json.dumps(getattr(cfg, f.name))}" for f in dataclasses.fields(cfg)]


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> the `# comment` on its line in `cls`'s source (empty if the source is unavailable)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    out = {}
    for node in ast.parse(source).body[0].body:  # type: ignore[attr-defined]
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            text = comments.get(node.end_lineno or node.lineno) or comments.get(node.lineno)
            if text:
                out[node.target.id] = text
    return out


def help_text(cls: type, description: str = "") -> str:
    """Usage, the tool's description and every key with its type, default and comment."""
    lines = ["usage: [key=value ...] [--dry-run] [-h]"]
    if description:
        lines += ["", description.strip()]
    if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):  # dataclasses invent a docstring
        lines += ["", cls.__doc__.strip()]
    lines += ["", "keys (lists as key=[1,2], booleans as key=true; --dry-run prints the resolved config and stops):"]
    defaults, comments = OmegaConf.to_container(OmegaConf.structured(cls)), field_comments(cls)
    for f in dataclasses.fields(cls):
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        default = json.dumps(defaults[f.name])  # type: ignore[index]
        lines.append(f"  {f.name}={default}  ({kind})" + (f"  {comments[f.name]}" if f.name in comments else ""))
    return "\n".join(lines)


def _example(cls: type) -> str:
    fields = dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ()
    return f"{fields[0].name}=..." if fields else "key=value"

