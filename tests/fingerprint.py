"""Describe every user variable of a kernel by value, to compare two kernels.

Sent as source into a kernel (standard library only at module level) by the corpus
tests: :func:`main` writes ``{name: description}`` as JSON, where a description is a
nested list that two kernels produce alike exactly when the variables hold equal
values with the same structure:

* numbers, strings and bytes by value (floats exactly); arrays, tensors and pandas
  objects by dtype, shape and a hash of their bytes (object arrays element by element);
* matplotlib artists by a hash of their figure rendered to PNG;
* functions and classes the notebook defined by their code, defaults, closure values
  and class dictionaries; those of modules by their name;
* generators by their state and frame locals; other objects by type and ``__dict__``,
  ``__slots__`` or what ``__reduce_ex__`` gives;
* an object met a second time (in the same variable or another) as a reference to its
  first description, so lost or added sharing shows as a difference too.
"""

import hashlib
import json
import os
import re
import sys
import types

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
#: attributes that hold caches or interpreter internals, not values (``__slotnames__``:
#: copyreg's cache on a class, filled in whenever an instance is pickled or copied)
_SKIP_ATTRS = {"_abc_impl", "__weakref__", "__dict__", "_cache", "__slotnames__"}
_ATOMS = (bool, int, float, complex, str, bytes, type(None))


def _shared_matters(obj) -> bool:
    """Whether two names for ``obj`` (rather than two equal copies) make a difference:
    not for immutable values (tuples, index labels, code, numpy scalars)."""
    if isinstance(obj, (tuple, frozenset, range, types.CodeType, types.ModuleType, property,
                        staticmethod, classmethod, types.BuiltinFunctionType)):
        return False
    if isinstance(obj, (type, types.FunctionType)) and _resolvable(obj):
        return False  # described by its name
    pd = sys.modules.get("pandas")
    np = sys.modules.get("numpy")
    return not ((pd is not None and isinstance(obj, pd.Index)) or (np is not None and isinstance(obj, np.generic)))


def _sha(data) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def _clean(text: str) -> str:
    return _ADDRESS.sub(" at 0x?", text)


def _resolvable(obj) -> bool:
    """Whether ``obj`` (a class or function) is found by its module and qualified name."""
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    if module is None or obj.__module__ == "__main__":
        return False
    found = module
    for part in getattr(obj, "__qualname__", "").split("."):
        found = getattr(found, part, None)
    return found is obj


class Describer:
    def __init__(self, ignored=()):
        self.memo = {}  # id -> [variable, index within it] of its first description
        self.keep = []  # objects described (their ids stay unique)
        self.figures = {}
        self.ignored = set(ignored)
        self.variable, self.count = "", 0

    def variable_start(self, name):
        self.variable, self.count = name, 0

    def __call__(self, obj, depth=0):
        if isinstance(obj, _ATOMS) and type(obj) in _ATOMS:
            return [type(obj).__name__, repr(obj)]
        if depth > 40:
            return ["deep", type(obj).__qualname__]
        if not _shared_matters(obj):
            return self.describe(obj, depth + 1)
        key = id(obj)
        if key in self.memo:
            return ["ref", self.memo[key]]
        self.memo[key] = [self.variable, self.count]
        self.count += 1
        self.keep.append(obj)
        return self.describe(obj, depth + 1)

    def describe(self, obj, depth):  # noqa: C901 - one rule per kind of value
        d = lambda o: self(o, depth)  # noqa: E731
        t = type(obj)
        name = f"{t.__module__}.{t.__qualname__}"
        np = sys.modules.get("numpy")
        pd = sys.modules.get("pandas")
        torch = sys.modules.get("torch")
        mpl = sys.modules.get("matplotlib.artist")
        if isinstance(obj, types.ModuleType):
            return ["module", obj.__name__]
        if isinstance(obj, os.PathLike):
            return ["path", name, os.fspath(obj)]
        if np is not None and isinstance(obj, np.ma.MaskedArray):
            return ["masked", d(np.asarray(obj.data)), d(np.ma.getmaskarray(obj))]
        if np is not None and isinstance(obj, np.ndarray):
            if obj.dtype.hasobject:
                return ["ndarray", "O", list(obj.shape), [d(x) for x in obj.ravel()]]
            return ["ndarray", obj.dtype.str, list(obj.shape), _sha(np.ascontiguousarray(obj).tobytes())]
        if np is not None and isinstance(obj, np.generic):
            return ["numpy", obj.dtype.str, repr(obj.item()) if obj.dtype.kind != "V" else _sha(obj.tobytes())]
        if pd is not None and isinstance(obj, pd.DataFrame):
            return ["DataFrame", name, d(obj.columns), d(obj.index),
                    [d(obj.iloc[:, i]) for i in range(obj.shape[1])], d(dict(obj.attrs))]
        if pd is not None and isinstance(obj, pd.Series):
            return ["Series", name, repr(obj.name), str(obj.dtype), d(obj.index), d(obj.to_numpy(dtype=object))]
        if pd is not None and isinstance(obj, pd.Index):
            return ["Index", name, repr(obj.names), str(obj.dtype), d(obj.to_numpy(dtype=object))]
        if torch is not None and isinstance(obj, torch.Tensor):
            t_ = obj.detach().cpu().contiguous()
            raw = t_.reshape(-1).view(torch.uint8).numpy().tobytes() if t_.numel() else b""
            return ["tensor", name, str(obj.dtype), list(obj.shape), obj.device.type, obj.requires_grad,
                    _sha(raw), d(obj.grad) if obj.grad is not None else None]
        if mpl is not None and isinstance(obj, mpl.Artist):
            return ["artist", name, self.figure(obj)]
        if isinstance(obj, (types.FunctionType, type)):
            return self.definition(obj, d)
        if isinstance(obj, (types.BuiltinFunctionType, types.MethodWrapperType, types.WrapperDescriptorType)):
            return ["builtin", _clean(repr(obj))]
        if isinstance(obj, types.MethodType):
            return ["method", obj.__func__.__qualname__, d(obj.__self__)]
        if isinstance(obj, types.CodeType):
            return ["code", obj.co_qualname if hasattr(obj, "co_qualname") else obj.co_name, _sha(obj.co_code),
                    [d(c) for c in obj.co_consts], list(obj.co_names)]
        if isinstance(obj, types.GeneratorType):
            import inspect

            state = inspect.getgeneratorstate(obj)
            local = obj.gi_frame.f_locals if obj.gi_frame is not None and state != inspect.GEN_CLOSED else {}
            return ["generator", obj.__qualname__, state, d(dict(local))]
        if isinstance(obj, (property, staticmethod, classmethod)):
            parts = [obj.fget, obj.fset, obj.fdel] if isinstance(obj, property) else [obj.__func__]
            return [name, [d(p) for p in parts]]
        if isinstance(obj, dict):
            extra = [d(obj.default_factory)] if hasattr(obj, "default_factory") else []
            return ["dict", name, [[d(k), d(v)] for k, v in obj.items()], extra, self.attrs(obj, d)]
        if isinstance(obj, (list, tuple)):
            return [t.__name__ if t in (list, tuple) else name, [d(x) for x in obj], self.attrs(obj, d)]
        if isinstance(obj, (set, frozenset)):
            items = sorted((d(x) for x in obj), key=lambda x: json.dumps(x, sort_keys=True))
            return [name, items]
        if np is not None and isinstance(obj, np.random.RandomState):
            return ["RandomState", d(obj.get_state())]
        if np is not None and isinstance(obj, np.random.Generator):
            return ["Generator", d(obj.bit_generator.state)]
        if hasattr(obj, "__dict__") or hasattr(t, "__slots__"):
            return ["object", name, d(t) if not _resolvable(t) else None, self.attrs(obj, d)]
        try:
            reduced = obj.__reduce_ex__(4)
        except Exception:  # noqa: BLE001 - described by its repr instead
            return ["repr", name, _clean(repr(obj))]
        if isinstance(reduced, str):
            return ["global", name, reduced]
        parts = list(reduced) + [None] * (5 - len(reduced))
        return ["reduce", name, d(parts[1]), d(parts[2]),
                d(list(parts[3])) if parts[3] is not None else None,
                d(list(parts[4])) if parts[4] is not None else None]

    def attrs(self, obj, d):
        out = []
        for key, value in sorted(getattr(obj, "__dict__", {}).items()):
            if key not in _SKIP_ATTRS and key not in self.ignored:
                out.append([key, d(value)])
        for cls in type(obj).__mro__:
            for slot in cls.__dict__.get("__slots__", ()) if isinstance(cls.__dict__.get("__slots__", ()), (tuple, list)) else ():
                attr = f"_{cls.__name__.lstrip('_')}{slot}" if slot.startswith("__") and not slot.endswith("__") else slot
                if slot not in _SKIP_ATTRS and hasattr(obj, attr):
                    out.append([slot, d(getattr(obj, attr))])
        return out

    def definition(self, obj, d):
        if _resolvable(obj):
            return ["ref-def", obj.__module__, obj.__qualname__]
        if isinstance(obj, type):
            body = [[k, d(v)] for k, v in sorted(obj.__dict__.items()) if k not in _SKIP_ATTRS and k != "__module__"]
            return ["class", obj.__qualname__, [d(b) for b in obj.__bases__], body]
        closure = [d(c.cell_contents) if _filled(c) else None for c in obj.__closure__ or ()]
        return ["function", obj.__qualname__, d(obj.__code__), d(obj.__defaults__), d(obj.__kwdefaults__),
                closure, self.attrs(obj, d)]

    def figure(self, artist):
        fig = artist.get_figure() if hasattr(artist, "get_figure") else None
        while fig is not None and getattr(fig, "figure", fig) is not fig:  # a subfigure: its root
            fig = fig.figure
        if fig is None:
            return _clean(repr(artist))
        if id(fig) not in self.figures:
            import io

            buf = io.BytesIO()
            fig.savefig(buf, format="png", metadata={"Software": None})
            self.figures[id(fig)] = _sha(buf.getvalue())
        return self.figures[id(fig)]


def _filled(cell):
    """Whether a closure cell holds a value (an empty one raises when read)."""
    try:
        _ = cell.cell_contents
    except ValueError:
        return False
    return True


def describe_namespace(ns, names, ignored=()):
    """``{name: description}`` for ``names`` of ``ns`` (in that order, which decides
    which of two names sharing an object is the reference); instance attributes named
    in ``ignored`` are left out."""
    describer = Describer(ignored)
    out = {}
    for name in names:
        describer.variable_start(name)
        try:
            out[name] = describer(ns[name])
        except Exception as err:  # noqa: BLE001 - the comparison shows it
            out[name] = ["error", f"{type(err).__name__}: {_clean(str(err))}"]
    return out


def main(path=None, ignored=()):
    """Write the descriptions of the kernel's user variables to ``path`` as JSON (print
    them without one)."""
    from IPython import get_ipython

    shell = get_ipython()
    ns = shell.user_ns
    hidden = set(shell.user_ns_hidden)
    names = sorted(n for n in ns if not n.startswith("_") and n not in hidden
                   and n not in ("In", "Out", "exit", "quit", "get_ipython", "open"))
    described = describe_namespace(ns, names, ignored)
    if path is None:
        print(json.dumps(described))
        return
    with open(path, "w") as f:
        json.dump(described, f)
