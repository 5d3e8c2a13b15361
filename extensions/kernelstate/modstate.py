"""Module-level state of the libraries a kernel has loaded.  RUNS INSIDE THE KERNEL.

Besides the user's variables, a notebook's later cells depend on state kept inside
modules: the global random streams (``random``, ``numpy.random``, ``torch``) and the
settings a cell changed (``sklearn.set_config``, ``pd.set_option``,
``np.set_printoptions``, ``plt.rc``, ``warnings.filterwarnings``). :func:`capture`
reads each of them from a module the kernel has already imported (none is imported
here), :func:`apply` puts them back in another kernel, so later cells continue the
same random streams with the same settings.

Like :mod:`.agent`, this file is sent as source into the kernel and must import only
the standard library at module level.
"""

import sys
import warnings


def _random_get(random):
    return random.getstate()


def _random_set(random, state):
    random.setstate(state)


def _numpy_random_get(np):
    return np.random.get_state()


def _numpy_random_set(np, state):
    np.random.set_state(state)


def _torch_random_get(torch):
    state = {"cpu": torch.get_rng_state()}
    # only when CUDA is already in use: asking would initialise it
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _torch_random_set(torch, state):
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"][:torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)


def _torch_dtype_get(torch):
    return str(torch.get_default_dtype()).replace("torch.", "")


def _torch_dtype_set(torch, name):
    torch.set_default_dtype(getattr(torch, name))


def _printoptions_get(np):
    return np.get_printoptions()


def _printoptions_set(np, options):
    np.set_printoptions(**options)


def _pandas_options():
    from pandas._config import config  # the registry of options (no public listing)

    return config


def _pandas_get(pd):
    """The options set to something other than their default."""
    config = _pandas_options()
    changed = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated options warn when read
        for key, option in config._registered_options.items():
            if key in config._deprecated_options:
                continue
            value = pd.get_option(key)
            if value is not option.defval:
                try:
                    same = bool(value == option.defval)
                except Exception:  # noqa: BLE001 - an option value that does not compare
                    same = False
                if not same:
                    changed[key] = value
    return changed


def _pandas_set(pd, options):
    for key, value in options.items():
        pd.set_option(key, value)


def _sklearn_get(sklearn):
    return sklearn.get_config()


def _sklearn_set(sklearn, config):
    import inspect

    known = inspect.signature(sklearn.set_config).parameters
    sklearn.set_config(**{k: v for k, v in config.items() if k in known})


#: where scikit-learn keeps the counters of the element ids of its HTML displays
_SKLEARN_DISPLAY = ("sklearn.utils._repr_html.estimator", "sklearn.utils._estimator_html_repr")


def _sklearn_ids_get(sklearn):
    """The counters behind the ids of scikit-learn's HTML displays: a display made
    after a move must not reuse the id of one shown before it in the same page."""
    counts = {}
    for module in _SKLEARN_DISPLAY:
        for name, value in vars(sys.modules.get(module) or sys).items():
            if type(value).__name__ == "_IDCounter" and isinstance(getattr(value, "count", None), int):
                counts[f"{module}.{name}"] = value.count
    return counts


def _sklearn_ids_set(sklearn, counts):
    import importlib

    for key, count in counts.items():
        module, name = key.rsplit(".", 1)
        counter = getattr(importlib.import_module(module), name)
        counter.count = max(counter.count, count)


#: rcParams a restore leaves as the kernel set them
_RC_KEEP = {"backend", "backend_fallback", "interactive"}


def _rc_get(matplotlib):
    return {k: v for k, v in dict(matplotlib.rcParams).items() if k not in _RC_KEEP}


def _rc_set(matplotlib, params):
    current = matplotlib.rcParams
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated keys warn when set
        for key, value in params.items():
            if key in current and current[key] != value:
                current[key] = value


def _warnings_get(w):
    return list(w.filters)


def _warnings_set(w, filters):
    w.filters[:] = filters
    w._filters_mutated()


#: (name in reports, module that must already be loaded, read, write)
STATES = (
    ("random", "random", _random_get, _random_set),
    ("numpy.random", "numpy", _numpy_random_get, _numpy_random_set),
    ("torch.random", "torch", _torch_random_get, _torch_random_set),
    ("torch.default_dtype", "torch", _torch_dtype_get, _torch_dtype_set),
    ("numpy.printoptions", "numpy", _printoptions_get, _printoptions_set),
    ("pandas.options", "pandas", _pandas_get, _pandas_set),
    ("sklearn.config", "sklearn", _sklearn_get, _sklearn_set),
    ("sklearn.display_ids", "sklearn", _sklearn_ids_get, _sklearn_ids_set),
    ("matplotlib.rcParams", "matplotlib", _rc_get, _rc_set),
    ("warnings.filters", "warnings", _warnings_get, _warnings_set),
)


def capture():
    """``(states, failed)``: ``{name: state}`` of every state whose module is loaded,
    and ``{name: reason}`` for those that could not be read."""
    states, failed = {}, {}
    for name, module, get, _set in STATES:
        mod = sys.modules.get(module)
        if mod is None:
            continue
        try:
            states[name] = (module, get(mod))
        except Exception as err:  # noqa: BLE001 - reported, the rest is still saved
            failed[name] = f"{type(err).__name__}: {err}"[:300]
    return states, failed


def apply(states):
    """Put back what :func:`capture` returned (importing the modules it names);
    returns ``{name: reason}`` for those that could not be set here."""
    import importlib

    setters = {name: setter for name, _module, _get, setter in STATES}
    failed = {}
    for name, (module, state) in states.items():
        try:
            setters[name](importlib.import_module(module), state)
        except Exception as err:  # noqa: BLE001 - reported, the rest is still applied
            failed[name] = f"{type(err).__name__}: {err}"[:300]
    return failed
