"""A tiny name -> object registry, so that components are looked up by name."""
from typing import Any, Callable, Dict


class Registry:
  """Maps names to objects; unknown names raise a ValueError listing the choices."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: Dict[str, Any] = {}

  def register(self, name: str) -> Callable[[Any], Any]:
    """Decorator: `@REGISTRY.register("name")`."""
    def wrap(obj):
      if name in self._entries:
        raise ValueError(f"{self.kind} {name!r} is registered twice.")
      self._entries[name] = obj
      return obj
    return wrap

  def get(self, name: str) -> Any:
    if name not in self._entries:
      raise ValueError(
          f"Unknown {self.kind} {name!r}; valid choices: {', '.join(self.names())}.")
    return self._entries[name]

  def names(self):
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries
