"""README.md and docs/*.md: links resolve, marked snippets have runners, the
README stays short and carries the command CI runs."""
import collections
import os
import re
import subprocess

import pytest

import doc_snippets

ROOT = doc_snippets.ROOT
README = os.path.join(ROOT, "README.md")
MAX_README_LINES = 250
FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"`[^`\n]*`")
DOCS_PATH = re.compile(r"\bdocs/[\w./-]*\w\.md\b")


def _prose_lines(text):
  """The lines outside fenced code blocks, with inline code removed."""
  inside = False
  for line in text.split("\n"):
    if FENCE.match(line):
      inside = not inside
    elif not inside:
      yield CODE_SPAN.sub("", line)


def _slug(heading):
  """GitHub's anchor of a heading: its text lower-cased, punctuation but
  hyphens dropped, spaces turned into hyphens."""
  text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
  return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path):
  """The anchors of a markdown file's headings (repeats get -1, -2, ...)."""
  with open(path) as f:
    text = f.read()
  seen = collections.Counter()
  found = set()
  inside = False
  for line in text.split("\n"):
    if FENCE.match(line):
      inside = not inside
      continue
    heading = re.match(r"^#{1,6} (.*)$", line)
    if heading and not inside:
      slug = _slug(heading.group(1))
      found.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
      seen[slug] += 1
  return found


def broken_links(path):
  """['file: target (why)'] for each relative link of a markdown file whose
  file does not exist or whose #anchor names no heading of it."""
  with open(path) as f:
    text = f.read()
  broken = []
  for line in _prose_lines(text):
    for target in LINK.findall(line):
      if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
        continue
      file_part, _, anchor = target.partition("#")
      resolved = (os.path.normpath(os.path.join(os.path.dirname(path), file_part))
                  if file_part else path)
      where = f"{os.path.relpath(path, ROOT)}: {target}"
      if not os.path.exists(resolved):
        broken.append(f"{where} (no such file)")
      elif anchor and resolved.endswith(".md") and anchor not in anchors(resolved):
        broken.append(f"{where} (no heading with this anchor)")
  return broken


def test_slug_follows_github():
  assert _slug("Trainer step vs keras.Model.fit") == "trainer-step-vs-kerasmodelfit"
  assert _slug("oneDNN on a CPU without AVX-512 (2026-11-25)") == (
      "onednn-on-a-cpu-without-avx-512-2026-11-25")
  assert _slug("Loading the original release's models") == (
      "loading-the-original-releases-models")


def test_link_checker_reports_missing_files_and_anchors(tmp_path):
  (tmp_path / "other.md").write_text("# Title\n\n## A section\n\n## A section\n")
  page = tmp_path / "page.md"
  page.write_text(
      "[ok](other.md#a-section) [ok](other.md#a-section-1) [ok](#here)\n"
      "# Here\n[bad](missing.md) [bad](other.md#nowhere) [web](https://x.org/y)\n"
      "`[in code](missing.md)`\n```\n[in a block](missing.md)\n```\n")
  assert broken_links(str(page)) == [
      f"{os.path.relpath(page, ROOT)}: missing.md (no such file)",
      f"{os.path.relpath(page, ROOT)}: other.md#nowhere "
      "(no heading with this anchor)"]


@pytest.mark.parametrize("path", doc_snippets.doc_files(),
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_resolve(path):
  assert broken_links(path) == []


@pytest.mark.parametrize("path", doc_snippets.doc_files(),
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_named_docs_pages_exist(path):
  with open(path) as f:
    named = set(DOCS_PATH.findall(f.read()))
  assert sorted(p for p in named if not os.path.exists(os.path.join(ROOT, p))) == []


def test_readme_links_every_docs_page():
  with open(README) as f:
    linked = {os.path.normpath(target.partition("#")[0])
              for target in LINK.findall(f.read())}
  pages = {os.path.relpath(p, ROOT) for p in doc_snippets.doc_files()[1:]}
  assert sorted(pages - linked) == []


def test_readme_fits_on_a_few_screens():
  with open(README) as f:
    assert len(f.read().splitlines()) <= MAX_README_LINES


def test_every_marked_snippet_is_run():
  """Each `<!-- KIND: NAME -->` marker is followed by its ```python block and
  its kind has a runner that runs the snippets of that kind found in the
  docs (the runner asserts it runs each of their names)."""
  markers = doc_snippets.markers()
  by_kind = collections.defaultdict(list)
  for source, kind, name in markers:
    assert kind in doc_snippets.RUNNERS, (
        f"{source}: <!-- {kind}: {name} --> has no runner; add a test that "
        f"runs it to doc_snippets.RUNNERS.")
    by_kind[kind].append(name)
  assert set(by_kind) == set(doc_snippets.RUNNERS)
  for kind, names in by_kind.items():
    assert sorted(names) == sorted(doc_snippets.snippets(kind)), (
        f"a <!-- {kind}: NAME --> marker without a ```python block after it")
    with open(os.path.join(ROOT, "tests", doc_snippets.RUNNERS[kind])) as f:
      assert f'doc_snippets.snippets("{kind}")' in f.read()


@pytest.mark.parametrize("path", doc_snippets.doc_files(),
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_every_python_block_is_marked(path):
  """A ```python block without a marker would be run by no test."""
  with open(path) as f:
    text = f.read()
  blocks = len(re.findall(r"^```python$", text, re.M))
  assert blocks == len(doc_snippets.SNIPPET.findall(text))


def test_readme_carries_the_command_ci_runs():
  """.ci/run's own extraction (its awk program) finds the test command."""
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    program = re.search(r"awk '(.*?)' README\.md", f.read(), re.S).group(1)
  command = subprocess.run(["awk", program, README], check=True,
                           capture_output=True, text=True).stdout.strip()
  assert command.endswith(".venv/bin/python -m pytest -q")
  assert '.venv/bin/pip install -e ".[test]"' in command
