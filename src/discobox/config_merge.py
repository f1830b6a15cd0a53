"""Reading config values: a YAML delta merged into the typed, frozen config dataclasses.

:func:`merge` applies a nested mapping (a recipe file's keys or parsed overrides) to a dataclass:
each value is coerced to the field's annotated type (:func:`_coerce`), checked against
:data:`_ENUMS` and :data:`_MINIMUM`, and an unknown key raises :class:`ConfigError` with a
"did you mean" hint (or the note that it was removed, :data:`REMOVED_KEYS`). Keys of
:data:`FRACTION_KEYS` may stay fractions of ``solver.max_iter``; ``discobox.config`` resolves them.

This module imports only :mod:`discobox.errors`; ``discobox.config`` builds on it.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any

from .errors import ConfigError

# a number in exponent notation: YAML 1.1 (PyYAML) keeps 5e-4 or 1e6 as a string
_EXP_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")

_ENUMS: dict[str, tuple[str, ...]] = {
    "loss.mode": ("box", "full"),
    "crf.mode": ("faithful", "meanfield", "none"),
    "solver.amp": ("fp16", "bf16", "none"),
    "test.kernel": ("gaussian", "linear"),
    "test.refine": ("none", "meanfield", "faithful"),
    "corr.solver": ("faithful", "sinkhorn"),
    "corr.loss": ("faithful", "infonce"),
    "corr.selection": ("first", "top"),
    "corr.bank_dtype": ("float32", "float16"),
}


# the least value of keys that count, divide or loop (of every element for a list), checked
# when a file or an override sets them; ``None`` (an unset optional key) passes
_MINIMUM: dict[str, float] = {
    "model.num_classes": 1,
    "model.num_grids": 1,
    "data.batch_size": 1,
    "data.num_workers": 0,
    "data.train_scales": 1,
    "data.test_scale": 1,
    "data.train_crop": 1,
    "solver.max_iter": 1,
    "solver.epochs": 1,
    "solver.steps": 0,
    "solver.warmup_iters": 0,
    "teacher.start_iter": 0,
    "loss.box_warmup_iters": 0,
    "loss.box_warmup_weight": 0,
    "train.log_period": 1,
    "train.checkpoint_period": 1,
    "train.eval_period": 0,
    "train.keep_checkpoints": 0,
    "test.max_per_img": 1,
    "test.nms_pre": 1,
    "test.tile": 1,
}

# iteration keys that may be given as a fraction in (0, 1) of solver.max_iter (module docstring)
FRACTION_KEYS = ("solver.steps", "solver.warmup_iters", "teacher.start_iter",
                 "loss.box_warmup_iters")


def to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Convert a YAML value to the annotated type ``tp``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{source}: bad value for {key!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key!r} must be a mapping, got {value!r}")
        return merge(tp(), value, prefix=key, source=source)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{source}: {key!r} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key, source) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{source}: {key!r} needs {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key, source) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {key!r} must be true or false, got {value!r}")
    if tp in (int, float) and isinstance(value, str) and _EXP_FLOAT.fullmatch(value.strip()):
        number = float(value)  # YAML 1.1 reads 5e-4 (no dot in the mantissa) as a string
        if tp is float or number.is_integer():
            return tp(number)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{source}: {key!r} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{source}: {key!r} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            choices = _ENUMS.get(key)
            if choices is not None and value not in choices:
                raise ConfigError(f"{source}: {key!r} must be one of {choices}, got {value!r}")
            return value
        raise ConfigError(f"{source}: {key!r} must be a string, got {value!r}")
    raise ConfigError(f"{source}: unsupported type for {key!r}")


# Options measured worse and deleted (BENCHMARKS.md "Ablation: every option tried, and its
# verdict"), each with the value that behaves as the code does now. A checkpoint's stored config
# may still hold them: config_from_dict drops them there; a user's file or override gets an error.
REMOVED_KEYS: dict[str, Any] = {
    "loss.ts_region": "box",
    "loss.ts_object_thresh": None,
    "loss.ts_term_max": None,
    "loss.outside_weight": 0.0,
    "loss.ts_ramp_iters": 0,
    "teacher.warmup": False,
    "crf.fill_holes": False,
    "crf.fill_ortho": False,
    "crf.schedule": "parallel",
}


def _unknown_key(key: str, candidates: list[str], source: str) -> ConfigError:
    if key in REMOVED_KEYS:
        return ConfigError(
            f"{source}: config key {key!r} was removed (measured worse; BENCHMARKS.md "
            f"\"Ablation: every option tried, and its verdict\")")
    close = difflib.get_close_matches(key.split(".")[-1], candidates, n=1, cutoff=0.6)
    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    hint = f"; did you mean {prefix + close[0]!r}?" if close else ""
    return ConfigError(f"{source}: unknown config key {key!r}{hint}")


def merge(base: Any, delta: dict[str, Any], *, prefix: str, source: str) -> Any:
    types_ = _field_types(type(base))
    changes: dict[str, Any] = {}
    for name, value in delta.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in types_:
            raise _unknown_key(key, list(types_), source)
        tp = types_[name]
        current = getattr(base, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[name] = merge(current, value, prefix=key, source=source)
        elif key in FRACTION_KEYS:
            changes[name] = _coerce_iterations(value, tp, key, source)
            _check_minimum(changes[name], key, source)
        else:
            changes[name] = _coerce(value, tp, key, source)
            _check_minimum(changes[name], key, source)
    return dataclasses.replace(base, **changes)


def is_fraction(value: Any) -> bool:
    return isinstance(value, float) and 0.0 < value < 1.0


def _coerce_iterations(value: Any, tp: Any, key: str, source: str) -> Any:
    """A key of :data:`FRACTION_KEYS`: whole numbers as :func:`_coerce` reads them, a float in
    (0, 1) kept as a fraction of ``solver.max_iter`` (resolved by :func:`resolve_schedule`)."""
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{source}: {key!r} must be a list, got {value!r}")
        return tuple(_coerce_iterations(v, int, key, source) for v in value)
    if is_fraction(value):
        return value
    try:
        return _coerce(value, tp, key, source)
    except ConfigError:
        raise ConfigError(
            f"{source}: {key!r} must be a whole number of iterations or a fraction in (0, 1) of "
            f"solver.max_iter, got {value!r}") from None


def _flat(value: Any) -> list[Any]:
    if isinstance(value, tuple):
        return [x for v in value for x in _flat(v)]
    return [value]


def _check_minimum(value: Any, key: str, source: str) -> None:
    """:class:`ConfigError` naming ``key`` when ``value`` (or one of its elements) is below
    :data:`_MINIMUM`'s bound."""
    least = _MINIMUM.get(key)
    if least is None or value is None:
        return
    if any(v < least for v in _flat(value)):
        every = "every value of " if isinstance(value, tuple) else ""
        raise ConfigError(f"{source}: {every}{key!r} must be >= {least}, got {to_plain(value)!r}")
