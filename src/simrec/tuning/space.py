"""The search space as data (`tuning.space` in conf/) turned into hyperopt expressions."""

from __future__ import annotations

import math
from typing import Any

from hyperopt import hp
from hyperopt.pyll import scope

from simrec.config import SearchDimension, Settings


def _is_whole(*numbers: float) -> bool:
    return all(float(number).is_integer() for number in numbers)


def dimension_expression(label: str, dimension: SearchDimension) -> Any:
    """One hyperopt expression, labelled with the dotted settings key it sets."""
    low, high, q = dimension.low, dimension.high, dimension.q
    if dimension.type == "choice":
        return hp.choice(label, dimension.options)
    if dimension.type == "uniform":
        return hp.uniform(label, low, high)
    if dimension.type == "loguniform":
        # hyperopt takes the bounds of log(value); conf gives the value's own bounds.
        return hp.loguniform(label, math.log(low), math.log(high))
    if dimension.type == "quniform":
        expression = hp.quniform(label, low, high, q)
    else:
        expression = hp.qloguniform(label, math.log(low), math.log(high), q)
    # Whole-number steps are counts (epochs, units): hand the settings an int, not 32.0.
    return scope.int(expression) if _is_whole(low, high, q) else expression


def search_space(settings: Settings) -> dict[str, Any]:
    """{dotted key: hyperopt expression}; fmin hands the objective {dotted key: value}."""
    dimensions = settings.tuning.dimensions()
    if not dimensions:
        raise ValueError("tuning.space is empty: nothing to search")
    return {key: dimension_expression(key, dimension) for key, dimension in dimensions.items()}


def _current_value(settings: Settings, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(settings, section), name)


def point_to_assignment(settings: Settings, point: dict[str, Any]) -> dict[str, Any]:
    """A point in the knobs' own values → hyperopt's internal assignment (a choice's index).

    Knobs the point leaves out take their configured value, so `{}` is "the current defaults".
    """
    assignment: dict[str, Any] = {}
    for key, dimension in settings.tuning.dimensions().items():
        value = point.get(key, _current_value(settings, key))
        if dimension.type == "choice":
            options = dimension.options or []
            if value not in options:
                raise ValueError(f"{key}={value!r} is not one of the choices {options}")
            value = options.index(value)
        assignment[key] = value
    return assignment
