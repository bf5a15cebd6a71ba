"""Tuning studies over the one trainer: the search-space YAML, its validation, and Optuna's parts.

A study YAML (configs/tune_*.yaml) names a recipe config, overrides every trial shares and
the parameters to search, each any recipe key:

    study:
      base: toy_learning          # the recipe config (configs/<base>.yaml) every trial starts from
      n_trials: 8                 # finished trials (complete + pruned) the study wants, over all workers
      objective: final            # final: held-out success at the end | auc: mean success over the evaluation curve
      pruner: {kind: median}      # median | halving | none
    fixed: {train.iterations: 6, eval.every: 1}
    params:
      optim.lr: {log_uniform: [1.0e-6, 1.0e-2]}
      algo.mode: {categorical: [weighted, cfg]}
      algo.guidance: {uniform: [1.0, 3.0], when: {algo.mode: cfg}}   # sampled only in cfg trials
      optim.epochs: {int: [2, 10]}
    enqueue: [{optim.lr: 1.0e-6}]  # trials run first, e.g. a known start

Why validate here: a typo in a key or an empty range must cost one line before any trial,
not a study of failed trials. Every bound and choice is checked by loading the recipe config
with it, so the recipe's own schema and rules decide what is valid.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import CONFIG_DIR, ConfigError, load_config, one_line_error

DISTRIBUTIONS = ("log_uniform", "uniform", "int", "categorical")
PARAM_OPTIONS = ("when", "step", "log")
# recipe keys a study sets itself: every trial writes to its own directory and starts fresh
RESERVED = ("logging.output_dir", "checkpoint.resume")


@dataclass
class PrunerSettings:
    kind: str = "median"  # median (below the median of earlier trials at the same iteration) | halving (successive halving) | none
    n_startup_trials: int = 2  # median: trials that finish before any is pruned
    n_warmup_steps: int = 1  # median: iterations before a trial can be pruned
    min_resource: int = 1  # halving: iterations of the first rung
    reduction_factor: int = 2  # halving: 1/reduction_factor of the trials go on at each rung


@dataclass
class StudySettings:
    base: str = "toy_learning"  # recipe config every trial starts from
    name: Optional[str] = None  # Optuna study name; None = the space file's name
    n_trials: int = 8  # finished (complete + pruned) trials wanted, counted over every worker
    direction: str = "maximize"  # maximize | minimize
    objective: str = "final"  # final (last held-out success) | auc (mean held-out success over the evaluation curve)
    pruner: PrunerSettings = field(default_factory=PrunerSettings)
    sampler_seed: int = 0  # TPE seed; trial k of a study samples with seed + k (workers draw different points)
    heartbeat_s: int = 30  # a running trial writes a heartbeat this often
    grace_s: int = 120  # a RUNNING trial without heartbeat this long is marked FAIL (its worker died) when a worker starts a trial
    max_failures: int = 3  # a worker stops after this many failed trials in a row (a space whose points do not run)


@dataclass
class Param:
    """One searched recipe key: its distribution and, for a conditional key, the parent values it applies at."""

    key: str
    kind: str  # one of DISTRIBUTIONS
    low: float = 0.0
    high: float = 0.0
    choices: list[Any] = field(default_factory=list)
    step: Optional[float] = None
    log: bool = False
    when: dict[str, list[Any]] = field(default_factory=dict)  # parent key -> values at which this key is sampled

    def describe(self) -> str:
        """One line for --dry-run: the distribution, its range and its condition."""
        dist = f"categorical {self.choices}" if self.kind == "categorical" else f"{self.kind} [{self.low}, {self.high}]"
        dist += f" step {self.step}" if self.step is not None else ""
        dist += " log" if self.log and self.kind == "int" else ""
        cond = "".join(f"  (when {k} in {v})" for k, v in self.when.items())
        return f"{self.key}: {dist}{cond}"


@dataclass
class SearchSpace:
    """A validated study: settings, shared recipe overrides, searched parameters, trials to run first."""

    source: str
    study: StudySettings
    fixed: dict[str, Any]
    params: list[Param]
    enqueue: list[dict[str, Any]] = field(default_factory=list)

    def fixed_overrides(self) -> list[str]:
        """The fixed keys as recipe `key=value` overrides, shared by every trial."""
        return [override(k, v) for k, v in self.fixed.items()]

    def describe(self) -> str:
        """What --dry-run prints: the settings, the shared overrides and every parameter."""
        lines = [f"study space {self.source}: base config '{self.study.base}', {self.study.n_trials} trials, "
                 f"{self.study.direction} {self.study.objective} held-out success, pruner {self.study.pruner.kind}, sampler seed {self.study.sampler_seed}"]
        lines += ["fixed:"] + ([f"  {o}" for o in self.fixed_overrides()] or ["  (none)"])
        lines += ["params:"] + [f"  {p.describe()}" for p in self.params]
        lines += (["enqueue:"] + [f"  {e}" for e in self.enqueue]) if self.enqueue else []
        return "\n".join(lines)


def override(key: str, value: Any) -> str:
    """`key=value` that the recipe's dotlist parser reads back as `value` (lists, null, booleans, floats)."""
    return f"{key}={value}" if isinstance(value, str) else f"{key}={json.dumps(value)}"


def find_space(name_or_path: str) -> Path:
    """A study YAML by path, or configs/<name>.yaml."""
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"study space {path} does not exist: give a YAML path or a name from configs/ (tune_toy, tune_libero)")
        return path
    path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("tune_*.yaml"))
        raise ConfigError(f"unknown study space '{name_or_path}': pick one of {names} or give a YAML path")
    return path


def load_space(name_or_path: str) -> SearchSpace:
    """Read and validate a study YAML; ConfigError (one line naming the entry and the fix) on any problem."""
    path = find_space(name_or_path)
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as e:
        raise ConfigError(f"{path} is not valid YAML ({str(e).splitlines()[0]}): fix the file") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping with study, fixed, params and enqueue: fix the file")
    unknown = set(raw) - {"study", "fixed", "params", "enqueue"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)}: use study, fixed, params, enqueue")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(StudySettings), raw.get("study") or {})
        study: StudySettings = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: study: {one_line_error(e, schema='see StudySettings in recipes/training/tuning.py', fix='fix the study section')}") from e
    study.name = study.name or path.stem
    fixed = raw.get("fixed") or {}
    params_raw = raw.get("params") or {}
    enqueue = raw.get("enqueue") or []
    if not isinstance(fixed, dict) or not isinstance(params_raw, dict) or not isinstance(enqueue, list):
        raise ConfigError(f"{path}: fixed and params must be mappings of recipe keys, enqueue a list of mappings: fix the file")
    space = SearchSpace(str(path), study, dict(fixed), [], list(enqueue))
    _check_study(space)
    for key, spec in params_raw.items():
        space.params.append(_parse_param(space, str(key), spec))
    space.params = _order_conditions(space)
    _check_enqueue(space)
    return space


def _check_study(space: SearchSpace) -> None:
    s, where = space.study, space.source

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{where}: {msg}")

    need(s.n_trials >= 1, f"study.n_trials={s.n_trials} must be >= 1")
    need(s.direction in ("maximize", "minimize"), f"study.direction={s.direction!r}: use maximize or minimize")
    need(s.objective in ("final", "auc"), f"study.objective={s.objective!r}: use final (last held-out success) or auc (the curve's mean)")
    need(s.pruner.kind in ("median", "halving", "none"), f"study.pruner.kind={s.pruner.kind!r}: use median, halving or none")
    need(s.pruner.n_startup_trials >= 0 and s.pruner.n_warmup_steps >= 0, "study.pruner.n_startup_trials and n_warmup_steps must be >= 0")
    need(s.pruner.min_resource >= 1 and s.pruner.reduction_factor >= 2, "study.pruner.min_resource must be >= 1 and reduction_factor >= 2")
    need(s.heartbeat_s >= 1 and s.grace_s > s.heartbeat_s, f"study.grace_s={s.grace_s} must exceed study.heartbeat_s={s.heartbeat_s} >= 1")
    need(s.max_failures >= 1, "study.max_failures must be >= 1")
    reserved = sorted(set(space.fixed) & set(RESERVED))
    need(not reserved, f"fixed sets {reserved}: the study gives every trial its own fresh run directory, remove them")
    _load_point(space, {})  # base config + fixed overrides alone


def _load_point(space: SearchSpace, values: dict[str, Any], entry: str = "fixed") -> Any:
    """The recipe config at one point of the space (its rules apply); ConfigError naming `entry` if it is invalid."""
    try:
        return load_config(space.study.base, space.fixed_overrides() + [override(k, v) for k, v in values.items()])
    except ConfigError as e:
        raise ConfigError(f"{space.source}: {entry}: {e}") from e


def _parse_param(space: SearchSpace, key: str, spec: Any) -> Param:
    """One `params` entry: exactly one known distribution, a non-empty range of the key's type, a valid condition."""
    where = f"{space.source}: params.{key}"
    if key in RESERVED or key in space.fixed:
        raise ConfigError(f"{where}: the key is {'set by the study' if key in RESERVED else 'also in fixed'}: search it or fix it, not both")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: write {{log_uniform: [low, high]}}, {{uniform: [low, high]}}, {{int: [low, high]}} or {{categorical: [a, b]}}")
    dists = [k for k in spec if k not in PARAM_OPTIONS]
    if len(dists) != 1 or dists[0] not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: unknown distribution {dists}: use exactly one of {list(DISTRIBUTIONS)} (options {list(PARAM_OPTIONS)})")
    kind, arg = dists[0], spec[dists[0]]
    param = Param(key, kind, step=spec.get("step"), log=bool(spec.get("log", False)))
    if kind == "categorical":
        if not isinstance(arg, list) or not arg or any(isinstance(v, (list, dict)) for v in arg):
            raise ConfigError(f"{where}: categorical needs a non-empty list of plain values, e.g. [weighted, cfg]")
        param.choices = list(arg)
        for v in arg:  # each choice must be a valid value of the recipe key
            _load_point(space, {key: v}, f"params.{key} choice {v!r}")
    else:
        if not isinstance(arg, list) or len(arg) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in arg):
            raise ConfigError(f"{where}: {kind} needs [low, high] numbers, e.g. {{{kind}: [1, 10]}}")
        low, high = arg
        if not low < high:
            raise ConfigError(f"{where}: empty range [{low}, {high}]: low must be below high")
        if (kind == "log_uniform" or param.log) and low <= 0:
            raise ConfigError(f"{where}: a log scale needs low > 0, got [{low}, {high}]: use a positive low or uniform")
        if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
            raise ConfigError(f"{where}: int needs integer bounds, got [{low}, {high}]")
        param.low, param.high = low, high
        cast = int if kind == "int" else float  # a float range on an int key fails here (the recipe's type check)
        for v in (low, high):
            _load_point(space, {key: cast(v)}, f"params.{key} bound {v!r}")
    when = spec.get("when") or {}
    if not isinstance(when, dict):
        raise ConfigError(f"{where}: when must map a categorical parameter to its value(s), e.g. when: {{algo.mode: cfg}}")
    param.when = {str(parent): values if isinstance(values, list) else [values] for parent, values in when.items()}
    return param


def _order_conditions(space: SearchSpace) -> list[Param]:
    """Check every `when` names a categorical parameter and one of its values; parents first, so sampling sees them."""
    by_key = {p.key: p for p in space.params}
    for p in space.params:
        for parent, values in p.when.items():
            if parent not in by_key or by_key[parent].kind != "categorical":
                raise ConfigError(f"{space.source}: params.{p.key}: when names {parent!r}, not a categorical parameter of the space: add it to params")
            bad = [v for v in values if v not in by_key[parent].choices]
            if bad:
                raise ConfigError(f"{space.source}: params.{p.key}: when {parent} in {bad}, but {parent} takes {by_key[parent].choices}: fix the condition")
    ordered: list[Param] = []
    while len(ordered) < len(space.params):
        ready = [p for p in space.params if p not in ordered and all(by_key[q] in ordered for q in p.when)]
        if not ready:
            raise ConfigError(f"{space.source}: params: the when conditions of {[p.key for p in space.params if p not in ordered]} form a loop: break it")
        ordered += ready
    return ordered


def _check_enqueue(space: SearchSpace) -> None:
    names = {p.key for p in space.params}
    for i, point in enumerate(space.enqueue):
        if not isinstance(point, dict) or not point or set(point) - names:
            raise ConfigError(f"{space.source}: enqueue[{i}] must map searched parameters {sorted(names)} to values, got {point!r}")
        _load_point(space, point, f"enqueue[{i}]")


def suggest(trial: Any, space: SearchSpace) -> dict[str, Any]:
    """Sample the trial's point: conditional keys only where their parents took a listed value."""
    values: dict[str, Any] = {}
    for p in space.params:
        if any(values.get(parent) not in allowed for parent, allowed in p.when.items()):
            continue
        if p.kind == "categorical":
            values[p.key] = trial.suggest_categorical(p.key, p.choices)
        elif p.kind == "int":
            values[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            values[p.key] = trial.suggest_float(p.key, float(p.low), float(p.high), step=p.step, log=p.kind == "log_uniform")
    return values


def objective_value(curve: list[tuple[int, float]], kind: str) -> float:
    """final: the last evaluation's success; auc: the area under success over iterations divided by their span.

    auc is a mean success that also rewards learning early, so a trial that gets there sooner ranks higher.
    """
    points = [(it, v) for it, v in curve if not math.isnan(v)]
    if not points:
        return float("nan")
    if kind == "final" or len(points) == 1:
        return points[-1][1]
    area = sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in zip(points, points[1:]))
    return area / (points[-1][0] - points[0][0])


def make_pruner(settings: PrunerSettings) -> Any:
    """The configured Optuna pruner (NopPruner for none)."""
    import optuna

    if settings.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=settings.n_startup_trials, n_warmup_steps=settings.n_warmup_steps)
    if settings.kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=settings.min_resource, reduction_factor=settings.reduction_factor)
    return optuna.pruners.NopPruner()


def make_storage(url: str, settings: StudySettings) -> Any:
    """An Optuna RDB storage with heartbeats, so a worker that dies leaves a trial that the next start marks FAIL.

    SQLite waits for its lock (several local workers share the file); any other URL (postgresql://) is used as is.
    """
    import optuna

    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=settings.heartbeat_s, grace_period=settings.grace_s)


def best_config_yaml(space: SearchSpace, values: dict[str, Any], header: str) -> str:
    """The best trial as a recipe YAML: its base as parent, the fixed and searched keys as nested sections.

    `python recipes/ript_cfg.py --config-path <study dir> --config-name best` runs it as it is.
    """
    node = OmegaConf.from_dotlist(space.fixed_overrides() + [override(k, v) for k, v in values.items()])
    body = OmegaConf.to_yaml(OmegaConf.merge(OmegaConf.create({"defaults": [space.study.base]}), node))
    return "".join(f"# {line}\n" for line in header.splitlines()) + body


def replace_settings(space: SearchSpace, **changes: Any) -> SearchSpace:
    """A copy of the space with other study settings (the benchmark's unpruned twin, --n_trials)."""
    return dataclasses.replace(space, study=dataclasses.replace(space.study, **changes))
