"""The marked code snippets of README.md and docs/*.md, for the tests that run
them.

A marked snippet is a ```python block on the line after `<!-- KIND: NAME -->`
(e.g. `<!-- finetune: keras_file -->`). Each KIND has one runner, a test
module that runs every snippet of that kind (`RUNNERS`); tests/test_docs.py
fails on a marker of another kind or one without its block.
"""
import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPORT_PLACEHOLDER = "DIR/export/latest"
MARKER = re.compile(r"^<!-- (\w+): (\S+) -->$", re.M)
SNIPPET = re.compile(r"^<!-- (\w+): (\S+) -->\n```python\n(.*?)^```$",
                     re.M | re.S)
# Snippet kind -> the test module (under tests/) that runs all of its snippets.
RUNNERS = {
    "finetune": "test_keras_export.py",
    "load": "test_hub_image_signature.py",
    "library": "test_pretext.py",
}


def doc_files():
  """README.md and docs/*.md, as absolute paths."""
  return [os.path.join(ROOT, "README.md")] + sorted(
      glob.glob(os.path.join(ROOT, "docs", "*.md")))


def _relative(path):
  return os.path.relpath(path, ROOT)


def markers():
  """Every `<!-- KIND: NAME -->` line: [(file, kind, name)]."""
  found = []
  for path in doc_files():
    with open(path) as f:
      found += [(_relative(path), kind, name)
                for kind, name in MARKER.findall(f.read())]
  return found


def snippets(kind):
  """{name: (file, code)} of the marked snippets of `kind`, in any doc file."""
  found = {}
  for path in doc_files():
    with open(path) as f:
      for snippet_kind, name, code in SNIPPET.findall(f.read()):
        if snippet_kind != kind:
          continue
        if name in found:
          raise ValueError(f"snippet {kind}:{name} is marked twice: in "
                           f"{found[name][0]} and {_relative(path)}.")
        found[name] = (_relative(path), code)
  return found


def run(kind, name, namespace, export_dir=None):
  """Runs snippet `kind`:`name` in `namespace` (updated in place and
  returned), with its placeholder export path replaced by `export_dir`."""
  source, code = snippets(kind)[name]
  if export_dir is not None:
    code = code.replace(EXPORT_PLACEHOLDER, export_dir)
  exec(compile(code, f"{source}:{kind}:{name}", "exec"), namespace)  # pylint: disable=exec-used
  return namespace
