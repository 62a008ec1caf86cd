"""Guards of the package's layering: gin stays in the command lines.

Issue 30 extends this to tfrevisit/data, tfrevisit/pretext and
tfrevisit/evaluation, which still read gin today.
"""
import ast
import os
import subprocess
import sys

import pytest

import tfrevisit

_PACKAGE_DIR = os.path.dirname(os.path.abspath(tfrevisit.__file__))
_GIN_FREE_PACKAGES = ("models", "evaluation")


def _sources(package):
  directory = os.path.join(_PACKAGE_DIR, package)
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


@pytest.mark.parametrize("package", _GIN_FREE_PACKAGES)
def test_library_package_sources_do_not_use_gin(package):
  sources = list(_sources(package))
  assert len(sources) >= 5
  found = {os.path.relpath(path, _PACKAGE_DIR): _gin_uses(path)
           for path in sources}
  assert not {path: uses for path, uses in found.items() if uses}


def test_the_checker_sees_an_import_of_gin(tmp_path):
  path = tmp_path / "module.py"
  path.write_text("import os\nimport gin.tf\n\n@gin.configurable\ndef f():\n"
                  "  pass\n")
  assert _gin_uses(str(path)) == [(2, "import gin.tf"), (4, "gin")]


@pytest.mark.parametrize("package", _GIN_FREE_PACKAGES)
def test_importing_a_library_package_does_not_load_gin(package):
  """Catches gin reached through another module (the sources do not show)."""
  code = (f"import sys, tfrevisit.{package}; "
          "print(sorted(m for m in sys.modules if m.split('.')[0] == 'gin'))")
  output = subprocess.run(
      [sys.executable, "-c", code], capture_output=True, text=True, check=True,
      env={**os.environ, "PYTHONPATH": os.path.dirname(_PACKAGE_DIR)}).stdout
  assert output.strip().splitlines()[-1] == "[]"
