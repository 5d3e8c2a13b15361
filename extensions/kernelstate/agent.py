"""Checkpoint and restore a kernel's user variables.  THIS MODULE RUNS INSIDE THE KERNEL.

The server extension sends this file's source over the kernel's execute channel (see
:mod:`.runner`), so it must import nothing but the standard library at module level;
NumPy, PyTorch and dill are used only when the kernel already has them.

A checkpoint is a directory:

* ``state.json`` - one entry per variable, in restore order, plus what was skipped;
* ``objects.bin`` - the pickle streams, back to back;
* ``buffers.bin`` - raw data buffers (NumPy arrays, pandas columns, tensors), 64-byte
  aligned, written with large sequential writes straight from the objects' memory
  (pickle protocol 5 out-of-band buffers). At restore, large buffers become private
  copy-on-write mappings of the file (no copy: pages come from the page cache on first
  touch, and a write copies only the page written); small ones are read with
  ``readinto`` into new buffers the restored objects own.

Entry kinds: ``module`` (re-imported; aliases keep their name), ``pickle`` / ``dill``
(one stream each, with out-of-band buffers; an entry with ``names`` is a group of
variables that share objects, pickled together as a tuple so the pickler's memo keeps
what they share shared), ``tensor`` (PyTorch: raw bytes, dtype,
shape, device; a CUDA tensor goes back to a GPU when the kernel has one), ``alias``
(another name for an object saved earlier), ``replay`` (a history cell re-run to
rebuild what could not be saved) and ``modstate`` (the state kept inside a library
module: random streams, settings; see :mod:`.modstate`), loaded last.

Classes and functions defined in the notebook (``__main__``) are saved by value with
dill, their globals being the notebook's namespace again on the target. An object that
holds one of them is saved in one group with it, so a restored instance is an instance
of the restored class, a subclass keeps the restored base, a descriptor stays an
instance of the restored descriptor class. Generators are rebuilt from their code and
frame when that gives the same values (not started, finished, or a generator
expression part-way through over an iterator that pickles); other generators part-way
through are listed in ``skipped`` and not replayed (a replay would restart them).

Tensors inside other objects (an ``nn.Module``, an optimizer, a dict or list) are
pickled as calls to :func:`rebuild_tensor` with the same raw bytes (out of band) and
device record, never through torch's own pickling, which refuses to load a CUDA tensor
where CUDA is unavailable. The device is decided at restore: a GPU when the kernel has
one, else the CPU, and the variable is listed in ``skipped``.
"""

import ast
import builtins
import importlib
import io
import json
import os
import pickle
import sys
import time
import types

#: the checkpoint format written (2: ``modstate`` entries, classes saved with
#: :func:`make_class`); restore reads :data:`READABLE`, so older snapshots still load
FORMAT = 2
READABLE = (1, 2)
#: buffers at least this large are restored from a private mapping of the checkpoint
MAP_MIN = 1 << 20
#: alignment of raw buffers in buffers.bin (so mapped arrays are aligned for SIMD)
ALIGN = 64
#: names that belong to IPython, never to the user
_IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython", "open"}


class CannotMove(pickle.PicklingError):
    """An object that cannot be moved, and that replaying the cell that made it would
    not rebuild as it is (a generator part-way through)."""


def _modstate():
    """The :mod:`.modstate` module: installed beside this one in a kernel, or imported
    from the package."""
    mod = sys.modules.get("_cloudhop_kernelstate_modstate")
    if mod is None:
        mod = importlib.import_module(__package__ + ".modstate")
    return mod


def _main_module():
    return sys.modules["__main__"]


def _shell():
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def user_names(ns, hidden=()):
    """The user's variables in ``ns``: not private, not IPython's own."""
    return sorted(
        n for n in ns
        if not n.startswith("_") and n not in hidden and n not in _IPYTHON_NAMES
    )


#: buffers at least this large are written and read by several threads at once (each
#: piece a system call that copies without the GIL), up to :data:`THREADS`
PARALLEL_MIN = 64 << 20
THREADS = 4


def _pieces(length):
    """``(start, end)`` spans cutting ``length`` bytes into page-aligned pieces, one per
    thread (one piece below :data:`PARALLEL_MIN`)."""
    if length <= 0:
        return [(0, 0)]
    n = min(THREADS, os.cpu_count() or 1) if length >= PARALLEL_MIN else 1
    step = -(-length // n)
    step += -step % 4096
    return [(a, min(a + step, length)) for a in range(0, length, step)]


def _each(fn, pieces):
    """``fn(start, end)`` for each piece, in threads when there are several."""
    if len(pieces) == 1:
        fn(*pieces[0])
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(pieces)) as pool:
        for _ in pool.map(lambda span: fn(*span), pieces):
            pass


class _Writer:
    """Appends to a file with unbuffered, large writes (a large buffer in pieces written
    at once by several threads)."""

    def __init__(self, path):
        self.f = open(path, "wb", buffering=0)
        self.pos = 0

    def write(self, data, align=1):
        """Append ``data`` (any buffer), starting at a multiple of ``align``; returns
        ``(offset, length)``."""
        view = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else memoryview(data)
        fd = self.f.fileno()
        self.pos += -self.pos % align  # the gap reads as zeros
        start, n = self.pos, len(view)

        def put(a, b):
            while a < b:
                a += os.pwrite(fd, view[a:b], start + a)

        _each(put, _pieces(n))
        self.pos += n
        return start, n

    def close(self):
        self.f.close()


class _Reader:
    def __init__(self, path, map_large=False):
        self.f = open(path, "rb", buffering=0) if os.path.exists(path) else None
        self.map = None
        if map_large and self.f is not None and os.fstat(self.f.fileno()).st_size:
            import mmap

            # private (copy-on-write) mapping: restored arrays are writable, their pages
            # come from the page cache on first touch, and the file is never modified
            self.map = mmap.mmap(self.f.fileno(), 0, access=mmap.ACCESS_COPY)

    def buffer(self, offset, length):
        """A writable buffer with the bytes at ``offset``: a slice of the private mapping
        for large buffers when mapping, else a new buffer filled by ``readinto``."""
        if self.map is not None and length >= MAP_MIN:
            return memoryview(self.map)[offset:offset + length]
        return self.read_into_new(offset, length, numpy_ok=True)

    def read_into_new(self, offset, length, numpy_ok=False):
        """A new writable buffer of ``length`` bytes filled from ``offset`` (a large one in
        pieces read at once by several threads).

        With ``numpy_ok`` and NumPy loaded, the buffer is a NumPy array: NumPy asks for
        transparent huge pages, which makes first touching the memory several times
        cheaper than a bytearray's 4 KiB pages."""
        np = sys.modules.get("numpy") if numpy_ok and length >= (1 << 20) else None
        buf = np.empty(length, dtype=np.uint8) if np is not None else bytearray(length)
        view = memoryview(buf)
        fd = self.f.fileno()

        def get(a, b):
            while a < b:
                n = os.preadv(fd, [view[a:b]], offset + a)
                if not n:
                    raise EOFError("checkpoint file is truncated")
                a += n

        _each(get, _pieces(length))
        return buf

    def close(self):
        if self.f:
            self.f.close()
        self.map = None  # restored objects keep the mapping alive as long as they need it


def _torch_tensor(obj):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor) and type(obj).__name__ in ("Tensor", "Parameter")


def _defined_in_main(obj):
    return isinstance(obj, (type, types.FunctionType)) and getattr(obj, "__module__", None) == "__main__"


def _plain_tensor(obj):
    """A dense tensor whose bytes can be brought to the host (not sparse, quantized or on
    the meta device); other tensors keep torch's own pickling."""
    torch = sys.modules["torch"]
    return (_torch_tensor(obj) and obj.layout == torch.strided and not obj.is_quantized
            and obj.device.type != "meta")


def _host_tensor(obj):
    """``(raw, record)``: the tensor's bytes on the host (a NumPy uint8 array, or ``b""``
    when empty) and what :func:`rebuild_tensor` needs besides them."""
    torch = sys.modules["torch"]
    t = obj.detach()
    device = str(t.device)
    if t.device.type != "cpu":
        t = t.to("cpu")
    t = t.resolve_conj().resolve_neg().contiguous()
    raw = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
    return raw, {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape), "device": device,
                 "requires_grad": bool(obj.requires_grad), "parameter": type(obj).__name__ == "Parameter"}


def _save_tensor(obj, buffers):
    raw, record = _host_tensor(obj)
    offset, length = buffers.write(raw, align=ALIGN)
    return dict(record, kind="tensor", buffer=[offset, length])


def _reduce_tensor(obj):
    raw, r = _host_tensor(obj)
    data = pickle.PickleBuffer(raw) if len(raw) else b""
    return rebuild_tensor, (data, r["dtype"], r["shape"], r["device"], r["requires_grad"], r["parameter"])


_picklers = {}


def _pickler_class(base, by_value):
    """``base`` (a pickler class) that saves nested torch tensors with
    :func:`rebuild_tensor`, generators with :func:`rebuild_generator` and, when
    ``by_value``, the classes the notebook defined with :func:`make_class`."""
    if (base, by_value) not in _picklers:
        class KernelPickler(base):
            if base is pickle.Pickler:
                def persistent_id(self, obj):
                    # what the C pickler memoizes can only be read by copying its whole
                    # memo (every string too); this sees each object as it is saved and
                    # keeps those that may be shared (see _dumps)
                    if type(obj) not in _ATOMIC:
                        self.seen[id(obj)] = (0, obj)
                    return None

            def reducer_override(self, obj):
                if by_value and isinstance(obj, type) and obj.__module__ == "__main__":
                    return _reduce_class(obj)
                if type(obj) is types.GeneratorType:
                    return _reduce_generator(obj)
                if "torch" in sys.modules and _plain_tensor(obj):
                    return _reduce_tensor(obj)
                return NotImplemented

        _picklers[base, by_value] = KernelPickler
    return _picklers[base, by_value]


#: what a class's ``__dict__`` holds that is not its state: made anew with the class,
#: or a cache (``__slotnames__``: copyreg's, filled in when an instance is pickled)
_CLASS_MADE = {"__dict__", "__weakref__", "__module__", "__qualname__", "__slots__", "_abc_impl", "__slotnames__"}


def _slot_names(cls):
    slots = cls.__dict__.get("__slots__", ())
    slots = (slots,) if isinstance(slots, str) else slots
    private = "_" + cls.__name__.lstrip("_")
    return {private + s if s.startswith("__") and not s.endswith("__") else s for s in slots}


def _reduce_class(cls):
    """A class the notebook defined, by value, in two steps as pickle allows: an empty
    class of the same metaclass, name and bases (members too, for an enum), memoized
    before its dictionary is saved, so the methods, descriptors and instances in it that
    name the class find this one (dill would save such a class by name, which fails on
    the target); then its dictionary, set by :func:`fill_class`."""
    enum = sys.modules.get("enum")
    body = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
    if "__slots__" in cls.__dict__:
        body["__slots__"] = cls.__dict__["__slots__"]
    members = None
    if enum is not None and isinstance(cls, enum.EnumMeta):
        members = {name: member._value_ for name, member in cls.__members__.items() if member._name_ == name}
        if "__init__" in cls.__dict__:
            body["__init__"] = cls.__dict__["__init__"]
    made = _CLASS_MADE | _slot_names(cls)
    state = {k: v for k, v in cls.__dict__.items() if k not in made}
    args = (type(cls), cls.__name__, cls.__bases__, body, members, cls.__dict__.get("__orig_bases__"))
    return make_class, args, state, None, None, fill_class


def make_class(meta, name, bases, body, members, orig_bases=None):
    """The empty class :func:`_reduce_class` saves first (an enum with its members).
    A class whose metaclass refuses its resolved bases (a ``TypedDict``) is made from
    the bases as written (``__orig_bases__``)."""
    if members is None:
        try:
            return types.new_class(name, bases, {"metaclass": meta}, lambda ns: ns.update(body))
        except TypeError:
            if orig_bases is None:
                raise
            return types.new_class(name, orig_bases, {}, lambda ns: ns.update(body))
    namespace = meta.__prepare__(name, bases)
    for key, value in list(body.items()) + list(members.items()):
        namespace[key] = value
    return meta(name, bases, namespace)


def fill_class(cls, state):
    """Set a class's saved dictionary on the class :func:`make_class` made (an enum
    keeps what making it set up: its members and their tables). Properties are told
    their name again, as making a class does (their error messages use it)."""
    import enum

    keep = set(cls.__dict__) if isinstance(cls, enum.EnumMeta) else set()
    for key, value in state.items():
        if key not in keep:
            setattr(cls, key, value)
            if isinstance(value, property):
                value.__set_name__(cls, key)
    return cls


def _dumps(obj, use_dill):
    """Pickle ``obj`` with protocol 5; returns ``(data, oob, memo)``: contiguous buffers
    go out of band (``oob``), ``memo`` is the pickler's ``{id: (index, object)}`` of every
    object it memoized (which objects this one shares with others; holding it keeps
    their ids unique).

    dill saves what the notebook defined by value, each function with the notebook's
    namespace as its globals (``recurse`` off: the globals are not copied, so a function
    sees the restored variables and later assignments, as it did here)."""
    oob = []

    def keep(pb):
        try:
            pb.raw()
        except BufferError:
            return True  # non-contiguous: leave in band
        oob.append(pb)
        return False

    out = io.BytesIO()
    if use_dill:
        import dill

        base, extra = dill.Pickler, {"recurse": False, "byref": False}
    else:
        base, extra = pickle.Pickler, {}
    pickler = _pickler_class(base, use_dill)(out, protocol=5, buffer_callback=keep, **extra)
    pickler.seen = {}
    if use_dill:
        pickler._main = _main_module()  # the notebook's namespace is saved by reference
    pickler.dump(obj)
    # dill's (pure Python) pickler has its memo as a dict; the C pickler's objects were
    # seen one by one (its memo less the immutable values, which share nothing)
    memo = pickler.memo if isinstance(pickler.memo, dict) else pickler.seen
    return out.getvalue(), oob, memo


def _loads(data, bufs, use_dill):
    if not use_dill:
        return pickle.loads(data, buffers=bufs)
    import dill

    unpickler = dill.Unpickler(io.BytesIO(data), buffers=bufs)
    unpickler._main = _main_module()  # functions get this notebook's namespace as globals
    return unpickler.load()


def _genexpr_resumable(code):
    """Whether a generator expression part-way through continues exactly as a new one
    over its (advanced) iterator: one loop, nothing else on the value stack."""
    import dis

    return code.co_name == "<genexpr>" and sum(i.opname == "FOR_ITER" for i in dis.get_instructions(code)) == 1


def _reduce_generator(gen):
    """How a generator is pickled: its code, module, closure values and arguments (not
    started), or its code alone (finished); raises :class:`CannotMove` when it is
    part-way through and would not continue where it was."""
    import inspect

    code, state = gen.gi_code, inspect.getgeneratorstate(gen)
    names = (gen.__name__, gen.__qualname__)
    if state == inspect.GEN_CLOSED:
        return rebuild_generator, (code, None, None, None, None) + names
    if state == inspect.GEN_RUNNING:
        raise CannotMove("the generator is running")
    frame = gen.gi_frame
    local = frame.f_locals
    if state == inspect.GEN_SUSPENDED and not _genexpr_resumable(code):
        raise CannotMove(f"generator {gen.__qualname__} is part-way through; it cannot be moved "
                         "(re-running the cell that made it would start it again)")
    missing = [n for n in code.co_freevars if n not in local]
    if missing:
        raise CannotMove(f"generator {gen.__qualname__}: its closure ({', '.join(missing)}) cannot be read")
    n_args = code.co_argcount + code.co_kwonlyargcount
    args = [local[n] for n in code.co_varnames[:code.co_argcount]]
    kwargs = {n: local[n] for n in code.co_varnames[code.co_argcount:n_args]}
    extra = code.co_varnames[n_args:]
    if code.co_flags & inspect.CO_VARARGS:
        args += list(local[extra[0]])
        extra = extra[1:]
    if code.co_flags & inspect.CO_VARKEYWORDS:
        kwargs.update(local[extra[0]])
    module = frame.f_globals.get("__name__", "__main__")
    closure = [local[n] for n in code.co_freevars]
    return rebuild_generator, (code, module, closure, args, kwargs) + names


def rebuild_generator(code, module, closure, args, kwargs, name, qualname):
    """A generator running ``code`` (in ``module``'s namespace) from the start with
    ``args``; a finished one (closed before it runs) when ``module`` is None."""
    if module is None:
        n_args = code.co_argcount + code.co_kwonlyargcount
        cells = tuple(types.CellType() for _ in code.co_freevars) or None
        fn = types.FunctionType(code, {}, name, None, cells)
        gen = fn(*[iter(())] * code.co_argcount, **dict.fromkeys(code.co_varnames[code.co_argcount:n_args]))
        gen.close()
    else:
        cells = tuple(types.CellType(v) for v in closure) or None
        fn = types.FunctionType(code, _module_dict(module), name, None, cells)
        gen = fn(*args, **kwargs)
    gen.__name__, gen.__qualname__ = name, qualname
    return gen


def _module_dict(name):
    if name == "__main__":
        return _main_module().__dict__
    return importlib.import_module(name).__dict__


def _write(data, oob, objects, buffers, use_dill):
    refs = [list(buffers.write(pb.raw(), align=ALIGN)) for pb in oob]
    _release(oob)
    return {"kind": "dill" if use_dill else "pickle", "data": list(objects.write(data)), "buffers": refs}


def _release(oob):
    for pb in oob:
        pb.release()


#: memoized values that say nothing about sharing (immutable ones, and modules); what
#: pickle saves by reference, classes and functions, is told by its ``__qualname__``
_VALUES = (str, bytes, int, float, complex, bool, type(None), tuple, frozenset, range, types.ModuleType)
_ATOMIC = frozenset(_VALUES)  # exact types: the fast path
_CONTAINERS = frozenset((list, dict, set, bytearray))


def _shareable(o):
    """Whether two variables holding ``o`` share something a restore must keep shared:
    a mutable container, an array, a tensor, an instance, or a class or function the
    notebook defined (dill saves those by value: one copy per stream). Not an immutable
    value, and not what pickle saves by reference (functions, compiled ones too, and
    classes of modules)."""
    t = type(o)
    if t in _CONTAINERS:
        return bool(o)  # an empty one is often a class-level default every instance names
    if t in _ATOMIC or isinstance(o, _VALUES):
        return False
    if hasattr(o, "__qualname__"):
        return _defined_in_main(o)
    return hasattr(o, "__dict__") or _array_like(o)


def _array_like(o):
    name = type(o).__name__
    return (name == "ndarray" and type(o).__module__ == "numpy") or _torch_tensor(o)


class _Groups:
    """Union-find over variable names: variables whose picklers memoized one shareable
    object are one group. Only ids two memos have in common are looked at, so the cost
    per variable is a set intersection, not a pass over its objects."""

    def __init__(self):
        self.parent = {}
        self.owner = {}  # id -> a variable whose pickler memoized it
        self.pins = []  # the memos, so no id is reused while the groups are made

    def add(self, name, memo):
        self.parent.setdefault(name, name)
        for i in memo.keys() & self.owner.keys():
            if _shareable(memo[i][1]):
                self.parent[self.find(name)] = self.find(self.owner[i])
        self.owner.update(dict.fromkeys(memo, name))
        self.pins.append(memo)

    def find(self, name):
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name


def _assigned(tree):
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                names.add((a.asname or a.name).split(".")[0])
    return names


def _scoped(stmt):
    """Names bound inside nested scopes of ``stmt`` (arguments, comprehension targets,
    function bodies): reading them does not read the user's namespace."""
    names = set()
    for node in ast.walk(stmt):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            names |= {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs}
            names |= {x.arg for x in (a.vararg, a.kwarg) if x}
            for inner in ast.walk(node):
                if isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Store):
                    names.add(inner.id)
        elif isinstance(node, ast.comprehension):
            names |= {n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)}
    return names


def _loaded(tree):
    """Names a cell reads from the namespace before binding them itself."""
    bound, needs = set(), set()
    for stmt in tree.body:
        loads = {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        needs |= loads - bound - _scoped(stmt)
        bound |= _assigned(stmt)
    return needs


def _plan_replays(failed, history, restorable):
    """For each name in ``failed``, the last history cell that binds it, if that cell
    reads only restorable names (or names an earlier replay rebuilds)."""
    cells = {}
    for name in failed:
        for index in range(len(history) - 1, 0, -1):
            source = history[index]
            try:
                tree = ast.parse(source)
            except SyntaxError:
                continue
            if name in _assigned(tree):
                cells.setdefault(index, (source, tree, []))[2].append(name)
                break
    plans, rebuilt = [], set()
    for index in sorted(cells):
        source, tree, names = cells[index]
        needs = {n for n in _loaded(tree) if not hasattr(builtins, n) and n not in ("get_ipython",)}
        bad = sorted(needs - restorable - rebuilt)
        if bad:
            plans.append((index, source, names, bad))
            continue
        rebuilt |= _assigned(tree)
        plans.append((index, source, names, None))
    return plans


def checkpoint(directory, ns=None, history=None, hidden=None):
    """Save the user's variables into ``directory``; returns a JSON-able summary
    ``{"variables": [...], "skipped": [{"name", "reason", "rebuilt"}], "bytes", "seconds"}``."""
    started = time.perf_counter()
    shell = _shell()
    if ns is None:
        ns = shell.user_ns
    if hidden is None:
        hidden = set(getattr(shell, "user_ns_hidden", {}) or {}) if shell else set()
    if history is None:
        history = list(ns.get("In") or [])
    os.makedirs(directory, exist_ok=True)
    objects = _Writer(os.path.join(directory, "objects.bin"))
    buffers = _Writer(os.path.join(directory, "buffers.bin"))
    first, later, failed, final = [], [], {}, set()
    # pass 1: pickle each variable on its own, in memory; pass 2 writes them, those that
    # share objects (a model and its optimizer, a dict holding an array) as one group so
    # they keep sharing them after a restore
    slots, groups, seen = [], _Groups(), {}
    try:
        for name in user_names(ns, hidden):
            obj = ns[name]
            if isinstance(obj, types.ModuleType):
                first.append({"name": name, "kind": "module", "module": obj.__name__})
                continue
            if id(obj) in seen and not isinstance(obj, (int, float, str, bytes, bool, type(None))):
                slots.append({"entry": {"name": name, "kind": "alias", "of": seen[id(obj)]}})
                continue
            try:
                if _torch_tensor(obj):
                    slots.append({"name": name, "obj": obj, "tensor": True, "dill": False, "main": False})
                    groups.add(name, {id(obj): (0, obj)})
                    seen[id(obj)] = name
                    continue
                main_def = _defined_in_main(obj)
                use_dill = main_def
                try:
                    data, oob, memo = _dumps(obj, use_dill)
                    if (not main_def and b"__main__" in data
                            and type(obj).__name__ not in ns and type(obj).__module__ == "__main__"):
                        _release(oob)
                        raise pickle.PicklingError("its class is no longer defined")
                except Exception as err:  # noqa: BLE001 - any pickling failure falls back to dill
                    try:
                        use_dill = True
                        data, oob, memo = _dumps(obj, use_dill)
                    except ImportError:
                        raise err from None
                slots.append({"name": name, "obj": obj, "data": data, "oob": oob,
                              "dill": use_dill, "main": main_def})
                groups.add(name, memo)
                seen[id(obj)] = name
            except Exception as err:  # noqa: BLE001 - reported per variable
                failed[name] = f"{type(err).__name__}: {err}"[:300]
                if isinstance(err, CannotMove):
                    final.add(name)

        members = {}
        for slot in slots:
            if "name" in slot:
                members.setdefault(groups.find(slot["name"]), []).append(slot)
        for slot in slots:
            if "entry" in slot:
                later.append(slot["entry"])
                continue
            group = members[groups.find(slot["name"])]
            if slot is not group[0]:
                continue  # written with its group
            entry = _write_group(group, objects, buffers) if len(group) > 1 else None
            for one in ([entry] if entry else [_write_one(m, objects, buffers) for m in group]):
                (first if one.pop("main") else later).append(one)
        modules, module_failed = _save_modstate(objects, buffers)
    finally:
        for slot in slots:
            _release(slot.get("oob", ()))
        objects.close()
        buffers.close()

    entries = first + later
    saved = {n for e in entries for n in _names(e)}
    skipped = []
    replayable = {n: r for n, r in failed.items() if n not in final}
    for index, source, names, bad in _plan_replays(replayable, history, saved):
        if bad is None:
            entries.append({"kind": "replay", "cell": index, "source": source, "names": names})
            for n in names:
                skipped.append({"name": n, "reason": failed[n], "rebuilt": f"by re-running In[{index}]"})
                failed.pop(n)
        else:
            for n in names:
                failed[n] += f" (In[{index}] made it but also reads {', '.join(bad)})"
    for n, reason in sorted(failed.items()):
        skipped.append({"name": n, "reason": reason, "rebuilt": None})
    for n, reason in sorted(module_failed.items()):
        skipped.append({"name": n, "reason": f"module state: {reason}", "rebuilt": None})
    entries += modules  # last: replayed cells may draw from the random streams
    state = {"format": FORMAT, "python": list(sys.version_info[:3]), "entries": entries, "skipped": skipped}
    with open(os.path.join(directory, "state.json"), "w") as f:
        json.dump(state, f)
    variables = sorted({n for e in entries for n in _names(e)})
    return {"variables": variables, "skipped": skipped, "modules": [e["name"] for e in modules],
            "bytes": objects.pos + buffers.pos, "seconds": time.perf_counter() - started}


def _save_modstate(objects, buffers):
    """One ``modstate`` entry per library state :mod:`.modstate` read; returns the
    entries and ``{name: reason}`` for what could not be read or saved."""
    states, failed = _modstate().capture()
    entries = []
    for name, (module, state) in states.items():
        try:
            data, oob, _memo = _dumps(state, False)
        except Exception as err:  # noqa: BLE001 - reported, the other states are saved
            failed[name] = f"{type(err).__name__}: {err}"[:300]
            continue
        entries.append(dict(_write(data, oob, objects, buffers, False), kind="modstate", name=name, module=module))
    return entries, failed


def _names(entry):
    """The variables an entry restores (a group or a replay has several; module state
    none)."""
    if entry["kind"] == "modstate":
        return []
    return entry["names"] if "names" in entry else [entry["name"]]


def _write_one(slot, objects, buffers):
    if slot.get("tensor"):
        entry = _save_tensor(slot["obj"], buffers)
    else:
        entry = _write(slot["data"], slot["oob"], objects, buffers, slot["dill"])
    return dict(entry, name=slot["name"], main=slot["main"])


def _write_group(group, objects, buffers):
    """One entry for variables that share objects: their values pickled together as a
    tuple, so the pickler's memo keeps what they share shared. None if that fails (each
    is then written on its own, as pass 1 pickled it)."""
    use_dill = any(m["dill"] for m in group)
    try:
        data, oob, _memo = _dumps(tuple(m["obj"] for m in group), use_dill)
    except Exception:  # noqa: BLE001 - each member pickled on its own already
        return None
    for m in group:
        _release(m.get("oob", ()))
    entry = _write(data, oob, objects, buffers, use_dill)
    return dict(entry, names=[m["name"] for m in group], main=any(m["main"] for m in group))


#: devices of tensors that :func:`rebuild_tensor` left on the CPU while loading one variable
_left_on_cpu = []


def _place(t, device):
    """``t`` (on the CPU) on ``device`` when this kernel has it, else on the CPU with the
    device noted in ``_left_on_cpu``; a CUDA tensor goes to the same GPU index, or GPU 0."""
    import torch

    kind, _, index = device.partition(":")
    if kind == "cpu":
        return t
    if kind == "cuda" and torch.cuda.is_available():
        index = int(index or 0)
        return t.to(f"cuda:{index if index < torch.cuda.device_count() else 0}")
    if kind != "cuda":
        try:
            return t.to(device)
        except (RuntimeError, ValueError):
            pass
    _left_on_cpu.append(device)
    return t


def rebuild_tensor(data, dtype, shape, device, requires_grad, parameter):
    """A tensor from its raw bytes and saved device record (how tensors nested in other
    objects are pickled): on ``device`` when this kernel has it, else on the CPU."""
    import torch

    dt = getattr(torch, dtype)
    if len(data):
        t = torch.frombuffer(data, dtype=torch.uint8).view(dt).reshape(shape)
    else:
        t = torch.empty(shape, dtype=dt)
    t = _place(t, device)
    if parameter:
        return torch.nn.Parameter(t, requires_grad=requires_grad)
    return t.requires_grad_(requires_grad) if t.is_floating_point() or t.is_complex() else t


def _moved_to_cpu(name, devices):
    where = ", ".join(sorted(set(devices)))
    lacking = "no GPU here" if all(d.startswith("cuda") for d in devices) else "not available here"
    return {"name": name, "reason": f"was on {where}; {lacking}, restored on the CPU", "rebuilt": "on the CPU"}


def _load_tensor(entry, reader, skipped):
    offset, length = entry["buffer"]
    raw = reader.buffer(offset, length) if length else b""
    del _left_on_cpu[:]
    t = rebuild_tensor(raw, entry["dtype"], entry["shape"], entry["device"], entry["requires_grad"],
                       entry.get("parameter"))
    if _left_on_cpu:
        skipped.append(_moved_to_cpu(entry["name"], _left_on_cpu))
    return t


def restore(directory, ns=None, map_buffers=True):
    """Load a checkpoint into ``ns`` (the kernel's user namespace by default); returns
    ``{"variables": [...], "skipped": [...], "seconds"}`` - ``skipped`` carries the
    checkpoint's own skips plus anything that failed to load here.

    With ``map_buffers``, large raw buffers are private copy-on-write mappings of
    ``buffers.bin`` (the file may be deleted afterwards); else they are read into new
    memory."""
    started = time.perf_counter()
    if ns is None:
        ns = _shell().user_ns
    with open(os.path.join(directory, "state.json")) as f:
        state = json.load(f)
    if state.get("format") not in READABLE:
        raise ValueError(f"checkpoint format {state.get('format')} is not one of {READABLE} "
                         "(made by a newer Cloudhop?)")
    skipped = list(state["skipped"])
    objects = _Reader(os.path.join(directory, "objects.bin"))
    buffers = _Reader(os.path.join(directory, "buffers.bin"), map_large=map_buffers)
    loaded = set()
    try:
        for entry in state["entries"]:
            kind = entry["kind"]
            name = entry.get("name")
            try:
                if kind == "module":
                    ns[name] = importlib.import_module(entry["module"])
                elif kind == "alias":
                    if entry["of"] in ns:
                        ns[name] = ns[entry["of"]]
                elif kind == "tensor":
                    ns[name] = _load_tensor(entry, buffers, skipped)
                elif kind in ("pickle", "dill", "modstate"):
                    offset, length = entry["data"]
                    data = objects.read_into_new(offset, length)
                    bufs = [buffers.buffer(o, n) for o, n in entry["buffers"]]
                    del _left_on_cpu[:]
                    value = _loads(data, bufs, kind == "dill")
                    if kind == "modstate":
                        for what, reason in _modstate().apply({name: (entry["module"], value)}).items():
                            skipped.append({"name": what, "reason": f"module state: {reason}", "rebuilt": None})
                        continue
                    if "names" in entry:  # a group: its values were pickled as one tuple
                        ns.update(zip(entry["names"], value))
                        loaded.update(entry["names"])
                    else:
                        ns[name] = value
                    if _left_on_cpu:
                        skipped.append(_moved_to_cpu(", ".join(_names(entry)), _left_on_cpu))
                    if "names" in entry:
                        continue
                elif kind == "replay":
                    keep = {n: ns[n] for n in loaded if n not in entry["names"]}
                    exec(compile(entry["source"], f"<cloudhop replay In[{entry['cell']}]>", "exec"), ns)
                    ns.update(keep)  # the cell may re-bind names restored with newer values
                    loaded.update(n for n in entry["names"] if n in ns)
                    continue
                loaded.add(name)
            except Exception as err:  # noqa: BLE001 - reported per variable
                reason = f"could not be restored: {type(err).__name__}: {err}"[:300]
                for what in entry.get("names") or [name]:
                    skipped.append({"name": what, "reason": reason, "rebuilt": None})
    finally:
        objects.close()
        buffers.close()
    return {"variables": sorted(loaded), "skipped": skipped, "seconds": time.perf_counter() - started}


def call(fn_name, *args):
    """Run ``checkpoint``/``restore`` and keep the JSON result for the caller to read
    back (``last_result``), so nothing is printed into the user's notebook."""
    global last_result
    try:
        result = {"ok": True, "result": globals()[fn_name](*args)}
    except Exception as err:  # noqa: BLE001 - sent back to the server
        result = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    last_result = json.dumps(result)
    return None


last_result = "null"
