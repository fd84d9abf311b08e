"""Read official mmsegmentation `.py` configs without importing mmseg/mmengine and without executing them.

The official configs are Python files, but they only use a small literal subset of Python: `dict(...)` calls,
literals, names assigned earlier, list arithmetic (`[1.0] * num_classes + [0.1]`), simple list comprehensions and a
`_base_` list of files to inherit from. This module walks the file's `ast` and evaluates exactly that subset. Anything
else (imports, attribute access on modules, arbitrary calls, lambdas...) is never executed: the value is kept as an
`Unresolved` marker holding its source text, and reported, so a caller can tell which settings it could not read.

Inheritance follows MMEngine's `Config.fromfile` semantics: the `_base_` files (paths relative to the including file)
are read first and must not define the same top-level name twice; the including file's values are then merged into
them recursively, dicts key by key, where a dict carrying `_delete_=True` replaces the inherited value instead of
being merged into it. `{{_base_.name}}` references (MMEngine's base-variable syntax) read the merged base values.
"""

import ast
import copy
import json
from pathlib import Path
from typing import Any

# A guard against configs that would build huge values (`[0] * 10**9`): the literal subset never needs them.
_MAX_SEQUENCE_LENGTH = 100_000

# Pure builtins that the official configs call on literals (e.g. `int(512 * x * 0.1)` in resize scales). They cannot
# reach the file system or import anything.
_SAFE_CALLS = {
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "round": round,
    "min": min,
    "max": max,
    "abs": abs,
    "len": len,
    "sum": sum,
    "list": list,
    "tuple": tuple,
    "sorted": sorted,
    "range": range,
}


class OfficialConfigError(ValueError):
    """An official config that cannot be read (missing base file, circular `_base_`, duplicate base keys...)."""


class Unresolved:
    """A config expression outside the evaluated subset. It was not executed; `source` is its text."""

    def __init__(self, source: str, location: str):
        self.source = source
        self.location = location

    def __repr__(self) -> str:
        return f"Unresolved({self.source!r} at {self.location})"


class _Evaluator:
    """Evaluates the statements of one config file in order, keeping the names it assigns."""

    def __init__(self, path: Path, text: str, base: dict[str, Any], unresolved: list[str]):
        self.path = path
        self.text = text
        self.base = base
        self.names: dict[str, Any] = {}
        self.imported: set[str] = set()
        self.unresolved = unresolved

    # -- helpers ------------------------------------------------------------------------------------------------------

    def _location(self, node: ast.AST) -> str:
        return f"{self.path}:{getattr(node, 'lineno', '?')}"

    def _unresolved(self, node: ast.AST, why: str) -> Unresolved:
        source = ast.get_source_segment(self.text, node) or ast.dump(node)
        marker = Unresolved(source, self._location(node))
        self.unresolved.append(f"{marker.location}: `{source}` ({why})")
        return marker

    @staticmethod
    def _is_resolved(value: Any) -> bool:
        if isinstance(value, Unresolved):
            return False
        if isinstance(value, dict):
            return all(_Evaluator._is_resolved(item) for item in value.values())
        if isinstance(value, list | tuple):
            return all(_Evaluator._is_resolved(item) for item in value)
        return True

    @staticmethod
    def _check_size(value: Any) -> Any:
        if isinstance(value, list | tuple | str | range) and len(value) > _MAX_SEQUENCE_LENGTH:
            raise OverflowError(f"sequence of length {len(value)}")
        return value

    # -- statements ---------------------------------------------------------------------------------------------------

    def run(self, module: ast.Module) -> dict[str, Any]:
        for statement in module.body:
            if isinstance(statement, ast.Assign):
                value = self.evaluate(statement.value)
                for target in statement.targets:
                    self._assign(target, value, statement)
            elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
                self._assign(statement.target, self.evaluate(statement.value), statement)
            elif isinstance(statement, ast.AugAssign) and isinstance(statement.target, ast.Name):
                combined = ast.BinOp(
                    left=ast.Name(statement.target.id, ast.Load()), op=statement.op, right=statement.value
                )
                ast.copy_location(combined, statement)
                self.names[statement.target.id] = self._binary(combined)
            elif isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
                continue  # docstring
            elif isinstance(statement, ast.Import | ast.ImportFrom):
                # Imports are never executed; the names they bind stay unresolved.
                for alias in statement.names:
                    name = (alias.asname or alias.name).split(".")[0]
                    self.names[name] = self._unresolved(statement, "import not executed")
                    self.imported.add(name)
            else:
                self._unresolved(statement, f"{type(statement).__name__} statement skipped")
        return self.names

    def _assign(self, target: ast.expr, value: Any, statement: ast.stmt):
        if isinstance(target, ast.Name):
            self.names[target.id] = value
        elif (
            isinstance(target, ast.Tuple | ast.List)
            and isinstance(value, list | tuple)
            and len(value) == len(target.elts)
        ):
            for element, item in zip(target.elts, value, strict=True):
                self._assign(element, item, statement)
        else:
            self._unresolved(statement, "assignment target not supported")

    # -- expressions --------------------------------------------------------------------------------------------------

    def evaluate(self, node: ast.expr, scope: dict[str, Any] | None = None) -> Any:
        try:
            return self._evaluate(node, scope or {})
        except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError, OverflowError) as error:
            return self._unresolved(node, f"evaluation failed: {error}")

    def _evaluate(self, node: ast.expr, scope: dict[str, Any]) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in scope:
                return scope[node.id]
            if node.id in self.names:
                # Copies, as exec would give separate objects after a merge mutates one of them.
                return copy.deepcopy(self.names[node.id])
            return self._unresolved(node, f"name {node.id!r} is not defined in this file")
        if isinstance(node, ast.List | ast.Tuple):
            items = []
            for element in node.elts:
                if isinstance(element, ast.Starred):
                    spread = self._evaluate(element.value, scope)
                    if not isinstance(spread, list | tuple):
                        return self._unresolved(node, "starred value is not a sequence")
                    items.extend(spread)
                else:
                    items.append(self._evaluate(element, scope))
            return self._check_size(items if isinstance(node, ast.List) else tuple(items))
        if isinstance(node, ast.Set):
            return self._set(node, scope)
        if isinstance(node, ast.Dict):
            result = {}
            for key, value in zip(node.keys, node.values, strict=True):
                if key is None:  # {**other}
                    spread = self._evaluate(value, scope)
                    if not isinstance(spread, dict):
                        return self._unresolved(node, "** value is not a dict")
                    result.update(spread)
                else:
                    result[self._hashable(self._evaluate(key, scope), key)] = self._evaluate(value, scope)
            return result
        if isinstance(node, ast.Call):
            return self._call(node, scope)
        if isinstance(node, ast.BinOp):
            return self._binary(node, scope)
        if isinstance(node, ast.UnaryOp):
            operand = self._evaluate(node.operand, scope)
            if not self._is_resolved(operand):
                return self._unresolved(node, "operand is unresolved")
            operators = {ast.USub: lambda v: -v, ast.UAdd: lambda v: +v, ast.Not: lambda v: not v}
            if type(node.op) not in operators:
                return self._unresolved(node, "operator not supported")
            return operators[type(node.op)](operand)
        if isinstance(node, ast.IfExp):
            test = self._evaluate(node.test, scope)
            if not self._is_resolved(test):
                return self._unresolved(node, "condition is unresolved")
            return self._evaluate(node.body if test else node.orelse, scope)
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            left, right = self._evaluate(node.left, scope), self._evaluate(node.comparators[0], scope)
            if not (self._is_resolved(left) and self._is_resolved(right)):
                return self._unresolved(node, "operand is unresolved")
            comparisons = {
                ast.Eq: lambda a, b: a == b,
                ast.NotEq: lambda a, b: a != b,
                ast.Lt: lambda a, b: a < b,
                ast.LtE: lambda a, b: a <= b,
                ast.Gt: lambda a, b: a > b,
                ast.GtE: lambda a, b: a >= b,
                ast.In: lambda a, b: a in b,
                ast.NotIn: lambda a, b: a not in b,
            }
            if type(node.ops[0]) not in comparisons:
                return self._unresolved(node, "comparison not supported")
            return comparisons[type(node.ops[0])](left, right)
        if isinstance(node, ast.ListComp):
            return self._list_comprehension(node, scope)
        if isinstance(node, ast.Subscript):
            container = self._evaluate(node.value, scope)
            index = (
                self._evaluate(node.slice, scope)
                if not isinstance(node.slice, ast.Slice)
                else self._slice(node.slice, scope)
            )
            if not (self._is_resolved(container) and self._is_resolved(index)):
                return self._unresolved(node, "subscript of an unresolved value")
            if not isinstance(container, list | tuple | dict | str):
                return self._unresolved(node, "subscript of a non-container")
            return copy.deepcopy(container[index])
        if isinstance(node, ast.Attribute):
            return self._base_reference(node)
        if isinstance(node, ast.JoinedStr):
            parts = []
            for value in node.values:
                if isinstance(value, ast.Constant):
                    parts.append(str(value.value))
                elif isinstance(value, ast.FormattedValue) and value.format_spec is None and value.conversion == -1:
                    item = self._evaluate(value.value, scope)
                    if not self._is_resolved(item):
                        return self._unresolved(node, "f-string part is unresolved")
                    parts.append(str(item))
                else:
                    return self._unresolved(node, "f-string formatting not supported")
            return "".join(parts)
        return self._unresolved(node, f"{type(node).__name__} expression not supported")

    @staticmethod
    def _hashable(key: Any, node: ast.expr) -> Any:
        if isinstance(key, list | dict | Unresolved):
            raise TypeError(f"unhashable dict key at line {node.lineno}")
        return key

    def _slice(self, node: ast.Slice, scope) -> slice:
        parts = [None if part is None else self._evaluate(part, scope) for part in (node.lower, node.upper, node.step)]
        return slice(*parts)

    def _set(self, node: ast.Set, scope) -> Any:
        # `{{_base_.name}}` parses as a set holding a set holding an attribute chain: MMEngine's base reference.
        if len(node.elts) == 1 and isinstance(node.elts[0], ast.Set) and len(node.elts[0].elts) == 1:
            inner = node.elts[0].elts[0]
            if isinstance(inner, ast.Attribute | ast.Subscript):
                return self._base_reference(inner)
        return self._unresolved(node, "set literal not supported")

    def _base_reference(self, node: ast.expr) -> Any:
        """`_base_.a.b` (or `_base_.a['b']`): a value of the merged base configs."""
        path = []
        current = node
        while isinstance(current, ast.Attribute | ast.Subscript):
            if isinstance(current, ast.Attribute):
                path.append(current.attr)
            elif isinstance(current.slice, ast.Constant):
                path.append(current.slice.value)
            else:
                return self._unresolved(node, "base reference with a computed index")
            current = current.value
        if not (isinstance(current, ast.Name) and current.id == "_base_"):
            return self._unresolved(node, "attribute access is not evaluated")
        value: Any = self.base
        for part in reversed(path):
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list | tuple) and isinstance(part, int) and -len(value) <= part < len(value):
                value = value[part]
            else:
                return self._unresolved(node, "the base configs do not define it")
        return copy.deepcopy(value)

    def _call(self, node: ast.Call, scope) -> Any:
        if not isinstance(node.func, ast.Name):
            return self._unresolved(node, "only dict(...) and pure builtins are evaluated")
        name = node.func.id
        args = []
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                spread = self._evaluate(arg.value, scope)
                if not isinstance(spread, list | tuple):
                    return self._unresolved(node, "starred argument is not a sequence")
                args.extend(spread)
            else:
                args.append(self._evaluate(arg, scope))
        kwargs = {}
        for keyword in node.keywords:
            value = self._evaluate(keyword.value, scope)
            if keyword.arg is None:
                if not isinstance(value, dict):
                    return self._unresolved(node, "** argument is not a dict")
                kwargs.update(value)
            else:
                kwargs[keyword.arg] = value
        if name == "dict" and name not in self.names:
            # dict(...) builds a config dict even when some values are unresolved; those stay marked inside it.
            if len(args) > 1 or (args and not isinstance(args[0], dict)):
                return self._unresolved(node, "dict() with positional arguments other than one dict")
            result = dict(args[0]) if args else {}
            result.update(kwargs)
            return result
        if name in _SAFE_CALLS and name not in self.names:
            if not all(self._is_resolved(value) for value in (*args, *kwargs.values())):
                return self._unresolved(node, "call with unresolved arguments")
            result = _SAFE_CALLS[name](*args, **kwargs)
            if isinstance(result, range):  # sized before it is materialised
                result = list(self._check_size(result))
            return self._check_size(result)
        return self._unresolved(node, f"call of {name}() is not evaluated")

    def _binary(self, node: ast.BinOp, scope: dict[str, Any] | None = None) -> Any:
        scope = scope or {}
        left, right = self._evaluate(node.left, scope), self._evaluate(node.right, scope)
        if not (self._is_resolved(left) and self._is_resolved(right)):
            return self._unresolved(node, "operand is unresolved")
        operators = {
            ast.Add: lambda a, b: a + b,
            ast.Sub: lambda a, b: a - b,
            ast.Mult: lambda a, b: a * b,
            ast.Div: lambda a, b: a / b,
            ast.FloorDiv: lambda a, b: a // b,
            ast.Mod: lambda a, b: a % b,
            ast.Pow: lambda a, b: a**b,
        }
        if type(node.op) not in operators:
            return self._unresolved(node, "operator not supported")
        if isinstance(node.op, ast.Mult) and isinstance(left, list | tuple | str) and isinstance(right, int):
            self._check_size(range(len(left) * right))
        if isinstance(node.op, ast.Pow) and isinstance(right, int) and right > 64:
            raise OverflowError("exponent too large")
        return self._check_size(operators[type(node.op)](left, right))

    def _list_comprehension(self, node: ast.ListComp, scope) -> Any:
        if len(node.generators) != 1 or node.generators[0].is_async:
            return self._unresolved(node, "only single-loop list comprehensions are evaluated")
        generator = node.generators[0]
        iterable = self._evaluate(generator.iter, scope)
        if not self._is_resolved(iterable) or not isinstance(iterable, list | tuple):
            return self._unresolved(node, "the loop iterates over an unresolved value")
        result = []
        for item in iterable:
            inner = dict(scope)
            if isinstance(generator.target, ast.Name):
                inner[generator.target.id] = item
            elif isinstance(generator.target, ast.Tuple) and all(
                isinstance(e, ast.Name) for e in generator.target.elts
            ):
                if not isinstance(item, list | tuple) or len(item) != len(generator.target.elts):
                    return self._unresolved(node, "cannot unpack the loop item")
                inner.update({element.id: value for element, value in zip(generator.target.elts, item, strict=True)})
            else:
                return self._unresolved(node, "loop target not supported")
            conditions = [self._evaluate(condition, inner) for condition in generator.ifs]
            if not all(self._is_resolved(condition) for condition in conditions):
                return self._unresolved(node, "loop condition is unresolved")
            if all(conditions):
                result.append(self._evaluate(node.elt, inner))
        return self._check_size(result)


def merge_config(child: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """MMEngine's `Config._merge_a_into_b`: merge `child` into a copy of `base`; a child dict with `_delete_=True`
    replaces the base value instead of being merged into it."""
    merged = dict(base)
    for key, value in child.items():
        if isinstance(value, dict):
            value = dict(value)
            if key in merged and not value.pop("_delete_", False):
                if not isinstance(merged[key], dict):
                    raise OfficialConfigError(
                        f"Cannot merge the dict given for {key!r} into the inherited non-dict value {merged[key]!r}; "
                        "add `_delete_=True` to replace it (MMEngine semantics)."
                    )
                merged[key] = merge_config(value, merged[key])
            else:
                merged[key] = value
        else:
            merged[key] = value
    return merged


def _strip_delete_markers(value: Any) -> Any:
    # MMEngine leaves `_delete_` in dicts that had nothing to replace; it is a merge instruction, never a setting.
    if isinstance(value, dict):
        return {key: _strip_delete_markers(item) for key, item in value.items() if key != "_delete_"}
    if isinstance(value, list):
        return [_strip_delete_markers(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_strip_delete_markers(item) for item in value)
    return value


def _read_python_config(path: Path, unresolved: list[str], stack: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in stack:
        chain = " -> ".join(str(item) for item in (*stack, path))
        raise OfficialConfigError(f"Circular `_base_` inheritance: {chain}")
    if not path.is_file():
        raise OfficialConfigError(f"Config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        module = ast.parse(text, filename=str(path))
    except SyntaxError as error:
        raise OfficialConfigError(f"{path} is not valid Python: {error}") from error

    # `_base_` is read first (MMEngine reads the bases before the file itself), so that `{{_base_.x}}` resolves.
    base_paths: list[str] = []
    base_evaluator = _Evaluator(path, text, {}, unresolved)
    for statement in module.body:
        if (
            isinstance(statement, ast.Assign)
            and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Name)
            and statement.targets[0].id == "_base_"
        ):
            value = base_evaluator.evaluate(statement.value)
            base_paths = [value] if isinstance(value, str) else list(value) if isinstance(value, list | tuple) else []
            if not all(isinstance(item, str) for item in base_paths):
                raise OfficialConfigError(f"{path}: `_base_` must be a file name or a list of file names.")
    base: dict[str, Any] = {}
    for base_name in base_paths:
        if "::" in base_name:
            raise OfficialConfigError(
                f"{path}: base {base_name!r} lives in an installed package (mmdet::, mmseg::...), which this reader "
                "does not import; copy that file next to the config and reference it by relative path."
            )
        base_config = _read_python_config(path.parent / base_name, unresolved, (*stack, path))
        duplicates = sorted(set(base) & set(base_config))
        if duplicates:
            raise OfficialConfigError(f"{path}: the `_base_` files define {duplicates} more than once.")
        base.update(base_config)

    evaluator = _Evaluator(path, text, base, unresolved)
    names = evaluator.run(module)
    # Like MMEngine, drop dunder names and the modules a file imports: they are not settings.
    own = {
        key: value
        for key, value in names.items()
        if not key.startswith("__") and key != "_base_" and key not in evaluator.imported
    }
    return merge_config(own, base)


def load_official_config(path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """Read an official config file. Returns `(config, unresolved)`: the whole merged config dict (`config["model"]`
    is the model dict) and one line per expression that was not evaluated (file:line, source, reason).

    `.py` files are parsed as described in the module docstring. `.json` files hold the model dict, or an object with
    it under `"model"` or `"mmseg_model_config"` (the golden fixture's `config.json`); they are returned as
    `{"model": ...}`.
    """
    path = Path(path)
    unresolved: list[str] = []
    if path.suffix == ".json":
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        if not isinstance(data, dict):
            raise OfficialConfigError(f"{path} must hold a JSON object.")
        for key in ("mmseg_model_config", "model"):
            if isinstance(data.get(key), dict):
                return {"model": data[key]}, unresolved
        if "backbone" in data or "decode_head" in data:
            return {"model": data}, unresolved
        raise OfficialConfigError(
            f"{path}: expected the mmseg model dict (with `backbone` / `decode_head`), or an object holding it under "
            "`model` or `mmseg_model_config`."
        )
    if path.suffix != ".py":
        raise OfficialConfigError(f"{path}: the official config must be a `.py` file or the model dict as `.json`.")
    config = _read_python_config(path, unresolved, ())
    return _strip_delete_markers(config), unresolved


def official_model_config(path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """The `model` dict of an official config file (see `load_official_config`) and the unresolved expressions."""
    config, unresolved = load_official_config(path)
    model = config.get("model")
    if not isinstance(model, dict):
        raise OfficialConfigError(f"{path} defines no `model` dict (after resolving `_base_`).")
    return model, unresolved


__all__ = ["OfficialConfigError", "Unresolved", "load_official_config", "merge_config", "official_model_config"]
