"""Guards of the package's layering: gin stays in the command lines.

The library packages below take explicit arguments; the command lines
(`tfrevisit/*.py`, `tfrevisit/study`, `tfrevisit/bench`) parse gin and build
the library's objects through `tfrevisit.gin_config`.
"""
import ast
import os
import subprocess
import sys

import pytest

import tfrevisit

_PACKAGE_DIR = os.path.dirname(os.path.abspath(tfrevisit.__file__))
# The library: none of these packages' modules imports gin or reads gin
# state. One entry a line: add a package here when it sheds gin.
_GIN_FREE_PACKAGES = (
    "data",
    "evaluation",
    "models",
    "pretext",
)
# The same, for modules and packages of fewer than 5 files.
_GIN_FREE_MODULES = (
    "restore",
    "training",
)


def _sources(package):
  directory = os.path.join(_PACKAGE_DIR, package)
  if os.path.isfile(directory + ".py"):
    yield directory + ".py"
  for root, _, files in os.walk(directory):
    for name in sorted(files):
      if name.endswith(".py"):
        yield os.path.join(root, name)


def _gin_uses(path):
  """(line, what) of each import of gin and each use of a name `gin`."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  uses = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      uses += [(node.lineno, f"import {alias.name}") for alias in node.names
               if alias.name.split(".")[0] == "gin"]
    elif isinstance(node, ast.ImportFrom):
      if (node.module or "").split(".")[0] == "gin":
        uses.append((node.lineno, f"from {node.module} import ..."))
    elif isinstance(node, ast.Name) and node.id == "gin":
      uses.append((node.lineno, "gin"))
  return uses


@pytest.mark.parametrize("package", _GIN_FREE_PACKAGES + _GIN_FREE_MODULES)
def test_library_package_sources_do_not_use_gin(package):
  sources = list(_sources(package))
  assert len(sources) >= (1 if package in _GIN_FREE_MODULES else 5)
  found = {os.path.relpath(path, _PACKAGE_DIR): _gin_uses(path)
           for path in sources}
  assert not {path: uses for path, uses in found.items() if uses}


def test_the_checker_sees_an_import_of_gin(tmp_path):
  path = tmp_path / "module.py"
  path.write_text("import os\nimport gin.tf\n\n@gin.configurable\ndef f():\n"
                  "  pass\n")
  assert _gin_uses(str(path)) == [(2, "import gin.tf"), (4, "gin")]


@pytest.mark.parametrize("package", _GIN_FREE_PACKAGES + _GIN_FREE_MODULES)
def test_importing_a_library_package_does_not_load_gin(package):
  """Catches gin reached through another module (the sources do not show),
  importing each of the package's modules, not only its __init__."""
  modules = [os.path.relpath(path, os.path.dirname(_PACKAGE_DIR))[:-3]
             .replace(os.sep, ".").removesuffix(".__init__")
             for path in _sources(package)]
  code = (f"import sys, {', '.join(modules)}; "
          "print(sorted(m for m in sys.modules if m.split('.')[0] == 'gin'))")
  output = subprocess.run(
      [sys.executable, "-c", code], capture_output=True, text=True, check=True,
      env={**os.environ, "PYTHONPATH": os.path.dirname(_PACKAGE_DIR)}).stdout
  assert output.strip().splitlines()[-1] == "[]"
