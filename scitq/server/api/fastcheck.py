"""A request body checked against a Flask-RESTX model's own JSON Schema, in plain Python.

`@ns.expect(model, validate=True)` builds a jsonschema validator for every request and walks
it node by node: on the workers' reports and polls, which carry dozens of items each, that
was a tenth of the server's time per task. `compile_model(model)` turns the same schema
(the one the OpenAPI document shows) into nested closures once, with Draft 4's rules for the
keywords Flask-RESTX emits: type, properties, required, items, enum, minimum, maximum,
minLength, maxLength, minItems, maxItems, pattern, $ref and anyOf. Errors are those of `validate=True`: a 400
"Input payload validation failed" whose detail maps each field's path to what is wrong.
"""
import re

from scitq.errors import BadRequest

TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    # Draft 4: an integer is no float (1.0 is not one) and no boolean
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def compile_model(model):
    """check(payload) for a RESTX model: raises BadRequest as validate=True would."""
    definitions = {}        # model name -> its schema, for it and every model it nests

    def collect(m):
        if m.name in definitions:
            return
        definitions[m.name] = m.__schema__
        for field in m.values():
            for nested in _nested_models(field):
                collect(nested)

    collect(model)
    compiled = {}

    def ref(name):
        def check(value, path, errors):
            compiled[name](value, path, errors)
        return check

    for name, schema in definitions.items():
        compiled[name] = _compile(schema, ref)
    top = compiled[model.name]

    def check(payload):
        errors = {}
        top(payload, "", errors)
        if errors:
            raise BadRequest("Input payload validation failed", detail=errors)
        return payload

    return check


def _nested_models(field):
    nested = getattr(field, "nested", None)
    if nested is not None and hasattr(nested, "_schema"):
        yield nested
    container = getattr(field, "container", None)
    if container is not None:
        yield from _nested_models(container)


def _compile(schema, ref):
    checks = []
    if "$ref" in schema:
        checks.append(ref(schema["$ref"].rsplit("/", 1)[-1]))
    if "allOf" in schema:
        checks.extend(_compile(s, ref) for s in schema["allOf"])
    if "anyOf" in schema:
        checks.append(_any_of([_compile(s, ref) for s in schema["anyOf"]]))
    checks.extend(_value_checks(schema))
    if "required" in schema or "properties" in schema:
        checks.append(_object(schema.get("required", ()),
                              {k: _compile(s, ref) for k, s in (schema.get("properties") or {}).items()}))
    if "items" in schema:
        checks.append(_items(_compile(schema["items"], ref)))

    def check(value, path, errors):
        for c in checks:
            c(value, path, errors)
    return checks[0] if len(checks) == 1 else check


def _value_checks(schema):
    """The checks of one value's own keywords (type, enum, bounds, lengths, pattern), in order."""
    if "type" in schema:
        yield _type(schema["type"])
    if "enum" in schema:
        yield _enum(schema["enum"])
    for key, test, word in (("minimum", lambda v, b: v >= b, "less than the minimum of"),
                            ("maximum", lambda v, b: v <= b, "greater than the maximum of")):
        if key in schema:
            yield _bound(schema[key], test, word, TYPES["number"])
    for key, test, word in (("minLength", lambda v, b: len(v) >= b, "is too short"),
                            ("maxLength", lambda v, b: len(v) <= b, "is too long")):
        if key in schema:
            yield _length(schema[key], test, word)
    for key, test, word in (("minItems", lambda v, b: len(v) >= b, "is too short"),
                            ("maxItems", lambda v, b: len(v) <= b, "is too long")):
        if key in schema:
            yield _count(schema[key], test, word)
    if "pattern" in schema:
        yield _pattern(schema["pattern"])


def _fail(errors, path, message):
    errors.setdefault(path, message)


def _type(names):
    names = [names] if isinstance(names, str) else list(names)
    tests = [TYPES[n] for n in names]
    shown = names[0] if len(names) == 1 else names

    def check(value, path, errors):
        if not any(t(value) for t in tests):
            _fail(errors, path, f"{_show(value)} is not of type {shown!r}")
    return check


def _enum(allowed):
    def check(value, path, errors):
        # JSON Schema compares values, not Python's True == 1
        if not any(value == a and type(value) is type(a) for a in allowed):
            _fail(errors, path, f"{_show(value)} is not one of {allowed!r}")
    return check


def _bound(bound, test, word, applies):
    def check(value, path, errors):
        if applies(value) and not test(value, bound):
            _fail(errors, path, f"{_show(value)} is {word} {bound!r}")
    return check


def _length(bound, test, word):
    def check(value, path, errors):
        if isinstance(value, str) and not test(value, bound):
            _fail(errors, path, f"{_show(value)} {word}")
    return check


def _count(bound, test, word):
    def check(value, path, errors):
        if isinstance(value, list) and not test(value, bound):
            _fail(errors, path, f"{_show(value)} {word}")
    return check


def _pattern(pattern):
    regex = re.compile(pattern)

    def check(value, path, errors):
        if isinstance(value, str) and not regex.search(value):
            _fail(errors, path, f"{_show(value)} does not match {pattern!r}")
    return check


def _object(required, properties):
    def check(value, path, errors):
        if not isinstance(value, dict):
            return
        for key in required:
            if key not in value:
                _fail(errors, path, f"{key!r} is a required property")
        for key, item in value.items():         # a body holds few of the properties
            sub = properties.get(key)
            if sub is not None:
                sub(item, f"{path}.{key}" if path else key, errors)
    return check


def _items(sub):
    def check(value, path, errors):
        if isinstance(value, list):
            for i, item in enumerate(value):
                sub(item, f"{path}.{i}" if path else str(i), errors)
    return check


def _any_of(options):
    def check(value, path, errors):
        for option in options:
            mine = {}
            option(value, path, mine)
            if not mine:
                return
        _fail(errors, path, f"{_show(value)} is not valid under any of the given schemas")
    return check


def _show(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
