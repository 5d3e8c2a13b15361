"""Old names of renamed provider settings, kept so existing config keeps working.

The providers spell one concept one way across clouds (``public_ip``, ``api_endpoint``,
``disk_gb``, ...; docs/clouds.md lists them). A setting renamed for that keeps its old
name as a :class:`Renamed` trait beside the new one, in the manner of JupyterHub's
``_deprecated_aliases``::

    api_endpoint = Unicode("", help="...").tag(config=True)
    endpoint_url = Renamed("api_endpoint")

What a :class:`Renamed` trait promises:

* ``c.Class.old = v`` (in a config file, or ``Class(old=v)``) sets the new one, and
  logs a warning naming the old and the new setting (once per object);
* reading ``obj.old`` reads ``obj.new``: the two never disagree;
* a bad value is refused with the error the new setting gives, naming the old one (as
  the operator wrote it): the new trait's type check runs under the old name, and so
  do the class's ``@validate`` handlers of the new name (a handler listing the old name
  itself, ``@validate("disk_gb", "boot_volume_gb")``, is the one run instead). So a
  handler a base class declares for the new name, such as
  :class:`~.cloud.CloudProvider`'s ``api_endpoint`` check, covers every subclass's old
  name without the base knowing it.
"""

from __future__ import annotations

import copy
import weakref

from traitlets import TraitType
from traitlets.utils.bunch import Bunch

__all__ = ["Renamed"]


class Renamed(TraitType):
    """The old name of the setting ``new`` of the same class (see the module
    docstring)."""

    def __init__(self, new: str):
        super().__init__(help=f"Deprecated: the old name of ``{new}``, which it sets.")
        self.new = new
        self.tag(config=True)
        self._checks: dict[type, TraitType] = {}
        self._warned: weakref.WeakSet = weakref.WeakSet()

    def _as_new(self, obj) -> TraitType:
        """The new setting's trait, renamed to this one, so its errors name the old name."""
        cls = type(obj)
        if cls not in self._checks:
            check = copy.copy(cls.class_traits()[self.new])
            check.name, check.this_class = self.name, self.this_class
            self._checks[cls] = check
        return self._checks[cls]

    def default_value_repr(self) -> str:
        return f"(that of {self.new})"

    def get(self, obj, cls=None):
        return getattr(obj, self.new)

    def set(self, obj, value) -> None:
        check = self._as_new(obj)
        if not (value is None and check.allow_none) and hasattr(check, "validate"):
            value = check.validate(obj, value)
        # the @validate handlers run now, even while traitlets holds cross-validation
        # (in __init__ and config loading): the error must name the old name
        value = self._validate_as_new(obj, check, value)
        if obj not in self._warned:  # traitlets sets a constructor's arguments twice
            self._warned.add(obj)
            owner = self.this_class.__name__
            obj.log.warning("c.%s.%s is deprecated: use c.%s.%s", owner, self.name, owner, self.new)
        setattr(obj, self.new, value)

    def _validate_as_new(self, obj, check: TraitType, value):
        """Run the ``@validate`` handler of the old name, or else that of the new name,
        with a proposal whose trait is ``check`` (the new trait under the old name)."""
        handler = obj._trait_validators.get(self.name) or obj._trait_validators.get(self.new)
        if handler is None:
            return value
        return handler(obj, Bunch({"trait": check, "value": value, "owner": obj}))
