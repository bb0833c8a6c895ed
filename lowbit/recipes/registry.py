"""Short specs for recipes: ``from_spec("gptq:w4g64")`` and its inverse ``recipe.to_spec()``.

A spec is ``NAME[:OPTION,OPTION,...]``; steps of a :class:`Sequence` are joined by ``+``
(``"distill:num_layers=24+gptq:w4g64"``). An option is ``field=value`` for any field of the
recipe (``none``/``true``/``false``, numbers, ``a|b`` for tuples), or a shorthand the recipe
class reads (``w4g64``: 4 bits in groups of 64; ``b64``: NF4 block; ``histogram``: observer).
Each name maps to a recipe class plus preset fields (``gptq`` is ``WeightOnly(method="gptq")``).
"""
from __future__ import annotations

import dataclasses

from .base import Recipe

# name -> (recipe class, preset fields)
REGISTRY: dict[str, tuple[type, dict]] = {}


def register(name: str, **preset):
    """Class decorator: register ``cls`` under the spec ``name`` with ``preset`` fields."""
    def add(cls):
        if name in REGISTRY:
            raise ValueError(f"recipe spec {name!r} is already registered to {REGISTRY[name][0].__name__}")
        REGISTRY[name] = (cls, dict(preset))
        cls.spec_names = (*cls.__dict__.get("spec_names", ()), name)  # own names, not a base's
        return cls
    return add


def prefixed_int(token: str, prefix: str, field: str) -> dict | None:
    """``{field: N}`` for a shorthand token ``<prefix>N`` (``b64`` -> block_size=64), else None."""
    rest = token[len(prefix):]
    return {field: int(rest)} if token.startswith(prefix) and rest.isdigit() else None


def names() -> list[str]:
    return sorted(REGISTRY)


def _parse_value(text: str, default):
    low = text.lower()
    if low == "none":
        return None
    if isinstance(default, bool) or low in ("true", "false"):
        if low not in ("true", "false"):
            raise ValueError(f"expected true or false, got {text!r}")
        return low == "true"
    if isinstance(default, tuple):
        return tuple(_parse_value(t, "") for t in text.split("|")) if text else ()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _format_value(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "|".join(_format_value(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def from_spec(spec: str) -> Recipe:
    """The recipe a spec names, e.g. ``"gptq:w4g64"``, ``"nf4"``, ``"w8a8"``, ``"static:histogram"``."""
    if not isinstance(spec, str) or not spec.strip():
        raise TypeError(f"from_spec expects a spec such as 'gptq:w4g64', got {spec!r}")
    if "+" in spec:
        from .distill import Sequence

        return Sequence(*(from_spec(part) for part in spec.split("+")))
    name, _, options = spec.strip().partition(":")
    if name not in REGISTRY:
        raise ValueError(f"unknown recipe {name!r} in spec {spec!r}; known: {', '.join(names())}")
    cls, preset = REGISTRY[name]
    fields = _fields(cls)
    kwargs = dict(preset)
    for token in filter(None, (t.strip() for t in options.split(","))):
        key, eq, value = token.partition("=")
        if eq and key not in fields and hasattr(cls, "spec_option") and cls.spec_option(token) is not None:
            kwargs.update(cls.spec_option(token))   # a shorthand with "=" (mixed:bpw=4.0)
            continue
        if eq:
            if key not in fields:
                raise ValueError(f"spec {spec!r}: {cls.__name__} has no field {key!r}; fields: "
                                 f"{', '.join(fields)}")
            kwargs[key] = _parse_value(value, _default(fields[key]))
            continue
        short = cls.spec_option(token) if hasattr(cls, "spec_option") else None
        if short is None:
            raise ValueError(f"spec {spec!r}: {cls.__name__} does not understand option {token!r}; "
                             f"use field=value (fields: {', '.join(fields)})")
        kwargs.update(short)
    return cls(**kwargs)


def to_spec(recipe: Recipe) -> str:
    """The shortest registered spec that :func:`from_spec` turns back into an equal recipe."""
    from .distill import Sequence

    if isinstance(recipe, Sequence):
        return "+".join(to_spec(step) for step in recipe.steps)
    cls = type(recipe)
    fields = _fields(cls)
    for name in cls.spec_names:
        preset = REGISTRY[name][1]
        if all(getattr(recipe, k) == v for k, v in preset.items()):
            break
    else:
        raise ValueError(f"{cls.__name__} is not registered under any spec; use lowbit.recipes.register")
    tokens, done = (recipe.spec_tokens() if hasattr(recipe, "spec_tokens") else ([], set()))
    done = set(done) | set(preset)
    for key, f in fields.items():
        if key not in done and getattr(recipe, key) != _default(f):
            tokens.append(f"{key}={_format_value(getattr(recipe, key))}")
    return name + (":" + ",".join(tokens) if tokens else "")
