"""A tiny name -> object registry, so that components are looked up by name."""
import inspect
from typing import Any, Callable, Dict


class Registry:
  """Maps names to objects; unknown names raise a ValueError listing the choices.

  An entry may carry properties given at registration (e.g. a backbone's
  `fixed_input_size=True`), read back with `properties(name)`.
  """

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: Dict[str, Any] = {}
    self._properties: Dict[str, Dict[str, Any]] = {}

  def register(self, name: str, **properties) -> Callable[[Any], Any]:
    """Decorator: `@REGISTRY.register("name", **properties)`."""
    def wrap(obj):
      if name in self._entries:
        raise ValueError(f"{self.kind} {name!r} is registered twice.")
      self._entries[name] = obj
      self._properties[name] = dict(properties)
      return obj
    return wrap

  def get(self, name: str) -> Any:
    if name not in self._entries:
      raise ValueError(
          f"Unknown {self.kind} {name!r}; valid choices: {', '.join(self.names())}.")
    return self._entries[name]

  def properties(self, name: str) -> Dict[str, Any]:
    """The properties `name` was registered with ({} if none)."""
    self.get(name)
    return dict(self._properties[name])

  def check_arguments(self, name: str, *args, **kwargs) -> None:
    """Raises a ValueError naming the entry and its usage unless `name` takes
    these arguments."""
    signature = inspect.signature(self.get(name))
    takes_any_keyword = any(p.kind == p.VAR_KEYWORD
                            for p in signature.parameters.values())
    unknown = sorted(set(kwargs) - set(signature.parameters))
    if unknown and not takes_any_keyword:
      raise ValueError(f"{self.kind} {name!r}: no option {unknown}; usage: "
                       f"{name}{signature}.")
    try:
      signature.bind(*args, **kwargs)
    except TypeError as e:
      raise ValueError(
          f"{self.kind} {name!r}: {e}; usage: {name}{signature}.") from e

  def build(self, name: str, *args, **kwargs) -> Any:
    """Calls entry `name` with these arguments, checked first
    (`check_arguments`)."""
    self.check_arguments(name, *args, **kwargs)
    return self.get(name)(*args, **kwargs)

  def names(self):
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries
