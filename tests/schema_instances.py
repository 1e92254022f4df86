"""Hypothesis strategies for the instances of a JSON Schema, as far as docs/schemas use it.

hypothesis-jsonschema would be the obvious choice, but its last release (0.23.1) calls
Hypothesis internals that Hypothesis has since changed ('many' object has no attribute
'more'), so it fails on any object schema. This covers the keywords docs/schemas use and
fails loudly on any other, so a schema that grows a keyword cannot be half-generated. The
candidates are only a proposal: jsonschema's own validator keeps those the schema accepts.
"""

from __future__ import annotations

import math
import re
from typing import Any

from hypothesis import strategies as st
from jsonschema import Draft202012Validator

Schema = dict[str, Any]

# Keywords that only document; they never constrain an instance.
ANNOTATIONS = frozenset(
    {"$schema", "$id", "$comment", "$defs", "title", "description", "examples", "format"}
)
HANDLED = ANNOTATIONS | {
    "$ref",
    "allOf",
    "anyOf",
    "oneOf",
    "if",
    "then",
    "else",
    "enum",
    "const",
    "type",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "properties",
    "required",
    "additionalProperties",
    "propertyNames",
    "items",
    "uniqueItems",
}

# Unknown fields and free objects hold any JSON; a few small values are enough to show that
# the decoder ignores them. Integers beyond 64 bits too: a producer may well write them.
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
ANY_JSON = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)


def instances(schema: Schema) -> st.SearchStrategy[Any]:
    """Documents that `schema` accepts, as Python values ready for json.dumps."""
    validator = Draft202012Validator(schema)
    return _Generator(schema).of(schema).filter(validator.is_valid)


class _Generator:
    def __init__(self, root: Schema) -> None:
        self.root = root

    def of(self, schema: Schema | bool) -> st.SearchStrategy[Any]:
        if schema is True:
            return ANY_JSON
        if schema is False:
            return st.nothing()
        return st.one_of([self._flat(alternative) for alternative in self.alternatives(schema)])

    def alternatives(self, schema: Schema) -> list[Schema]:
        """The schema as alternatives without allOf, anyOf, oneOf, if or $ref on top.

        Each keeps the constraints of one way through the combinators; the validator
        discards a candidate that breaks the rest (the other branches of a oneOf, an if).
        """
        unknown = set(schema) - HANDLED
        if unknown:
            raise NotImplementedError(f"no generator for the keywords {sorted(unknown)}")
        combinators = {"$ref", "allOf", "anyOf", "oneOf", "if", "then", "else"}
        found: list[Schema] = [{k: v for k, v in schema.items() if k not in combinators}]
        parts: list[list[Schema]] = []
        if "$ref" in schema:
            parts.append(self.alternatives(self._target(schema["$ref"])))
        for part in schema.get("allOf", ()):
            parts.append(self.alternatives(part))
        for choice in ("anyOf", "oneOf"):
            if choice in schema:
                parts.append([a for part in schema[choice] for a in self.alternatives(part)])
        if "if" in schema:
            holds = self.alternatives({"allOf": [schema["if"], schema.get("then", {})]})
            parts.append(holds + self.alternatives(schema.get("else", {})))
        for options in parts:
            found = [_merge(mine, other) for mine in found for other in options]
        return found

    def _target(self, ref: str) -> Schema:
        if not ref.startswith("#/"):
            raise NotImplementedError(f"only local references: {ref}")
        target: Any = self.root
        for part in ref[2:].split("/"):
            target = target[part]
        return dict(target)

    def _flat(self, schema: Schema) -> st.SearchStrategy[Any]:
        if "enum" in schema:
            # Empty where merged constraints contradict each other: no instance that way.
            return st.sampled_from(schema["enum"]) if schema["enum"] else st.nothing()
        if "const" in schema:
            return st.just(schema["const"])
        kinds = schema.get("type")
        if kinds is None:
            kinds = ["object"] if "properties" in schema or "required" in schema else None
        if kinds is None:
            return ANY_JSON
        return st.one_of([self._typed(kind, schema) for kind in _kinds(kinds)])

    def _typed(self, kind: str, schema: Schema) -> st.SearchStrategy[Any]:
        if kind == "null":
            return st.none()
        if kind == "boolean":
            return st.booleans()
        if kind == "integer":
            low, high = schema.get("minimum"), schema.get("maximum")
            return _with_edges(st.integers(low, high), low, high)
        if kind == "number":
            low, high = schema.get("minimum"), schema.get("maximum")
            low = schema.get("exclusiveMinimum", low)
            high = schema.get("exclusiveMaximum", high)
            floats = st.floats(
                low,
                high,
                allow_nan=False,
                allow_infinity=False,
                exclude_min="exclusiveMinimum" in schema,
                exclude_max="exclusiveMaximum" in schema,
            )
            # JSON does not tell 3 from 3.0, but a producer writes either.
            first = None if low is None else math.ceil(low)
            last = None if high is None else math.floor(high)
            if first is not None and first == low and "exclusiveMinimum" in schema:
                first += 1
            if last is not None and last == high and "exclusiveMaximum" in schema:
                last -= 1
            if first is not None and last is not None and first > last:
                return floats
            return _with_edges(floats | st.integers(first, last), first, last)
        if kind == "string":
            low, high = schema.get("minLength", 0), schema.get("maxLength")
            if "pattern" in schema:
                # JSON Schema patterns search, as from_regex does without fullmatch.
                pattern = re.compile(schema["pattern"])
                texts = st.from_regex(pattern).filter(
                    lambda text: low <= len(text) and (high is None or len(text) <= high)
                )
            else:
                pattern = re.compile("")
                texts = st.text(min_size=low, max_size=high)
            if high is None:
                return texts
            # The longest text allowed, first: where a limit that differs would show.
            # Repeated from a short one: Hypothesis gives up on drawing hundreds of
            # characters for each of several fields.
            longest = texts.map(lambda text: (text * high)[:high])
            return longest.filter(lambda text: len(text) == high and pattern.search(text)) | texts
        if kind == "array":
            return st.lists(
                self.of(schema.get("items", True)),
                unique_by=repr if schema.get("uniqueItems") else None,
                max_size=4,
            )
        if kind == "object":
            return self._object(schema)
        raise NotImplementedError(f"no generator for type {kind!r}")

    def _object(self, schema: Schema) -> st.SearchStrategy[dict[str, Any]]:
        properties: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", ()))
        fixed = {name: self.of(properties.get(name, True)) for name in sorted(required)}
        optional = {name: self.of(sub) for name, sub in properties.items() if name not in required}
        declared = required | set(properties)
        extra_values = self.of(schema.get("additionalProperties", True))
        names = schema.get("propertyNames")
        extra_names = (
            self.of(names) if names is not None else st.text(min_size=1, max_size=10)
        ).filter(lambda name: name not in declared)
        extras = st.dictionaries(extra_names, extra_values, max_size=3)
        return st.builds(
            lambda known, more: {**more, **known},
            st.fixed_dictionaries(fixed, optional=optional),
            extras,
        )


def _merge(base: Schema, more: Schema) -> Schema:
    """Both flat schemas' constraints in one, as far as generating candidates needs.

    Where the two cannot be combined (two patterns), the later one is kept: the validator
    discards the candidates that break the other.
    """
    merged = dict(base)
    for key, value in more.items():
        if key not in merged or key in ANNOTATIONS:
            merged[key] = value
        elif key == "required":
            merged[key] = sorted(set(merged[key]) | set(value))
        elif key == "properties":
            properties = dict(merged[key])
            for name, sub in value.items():
                properties[name] = {"allOf": [properties[name], sub]} if name in properties else sub
            merged[key] = properties
        elif key == "type":
            merged[key] = [kind for kind in _kinds(merged[key]) if kind in _kinds(value)]
        elif key == "enum":
            merged[key] = [item for item in merged[key] if item in value]
        elif key == "const":
            # Two different constants: nothing is both.
            merged["enum"] = [value] if merged[key] == value else []
        elif key in ("minimum", "exclusiveMinimum", "minLength"):
            merged[key] = max(merged[key], value)
        elif key in ("maximum", "exclusiveMaximum", "maxLength"):
            merged[key] = min(merged[key], value)
        else:
            merged[key] = value
    if "const" in merged and "enum" in merged:
        merged["enum"] = [item for item in merged["enum"] if item == merged["const"]]
    return merged


def _kinds(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def _with_edges(
    values: st.SearchStrategy[Any], low: float | None, high: float | None
) -> st.SearchStrategy[Any]:
    """The bounds themselves too, where a limit that differs would show; first, since
    Hypothesis draws the first of its alternatives most (and the upper bound of these)."""
    edges = [edge for edge in (high, low) if edge is not None]
    return st.sampled_from(edges) | values if edges else values
