"""Preprocessing specs: `"op1(args)|op2|..."` composed from the ops registry.

A spec is a string of `|`-separated ops, or a list of such strings (handy in
gin). Each op is `name` or `name(args)` with Python-literal positional and
keyword arguments, e.g. `"resize(292)|crop(255)|to_gray(p=0.66)"`. Ops are in
`tfrevisit.data.ops` (`OPS.names()` lists them).
"""
import ast
from typing import Any, Callable, Dict, List, Sequence, Tuple, Union

from tfrevisit.data import ops

OPS = ops.OPS
SEED_KEY = ops.SEED_KEY

Spec = Union[str, Sequence[str]]
ParsedOp = Tuple[str, Tuple[Any, ...], Dict[str, Any]]


def _parse_op(text: str) -> ParsedOp:
  """`"name(1, k=2)"` -> ("name", (1,), {"k": 2})."""
  name, paren, rest = text.partition("(")
  name = name.strip()
  if not name:
    raise ValueError(f"Preprocessing op {text!r} has no name.")
  if not paren:
    return name, (), {}
  try:
    call = ast.parse(f"f({rest}", mode="eval").body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
      raise ValueError("not a single call")
    args = tuple(ast.literal_eval(arg) for arg in call.args)
    kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords
              if kw.arg is not None}
    if len(kwargs) != len(call.keywords):
      raise ValueError("**kwargs are not allowed")
  except (SyntaxError, ValueError) as e:
    raise ValueError(f"Preprocessing op {text!r}: arguments must be Python "
                     f"literals, as in `name(1, key='value')` ({e}).") from e
  return name, args, kwargs


def parse_spec(spec: Spec) -> List[ParsedOp]:
  """Splits a spec into (name, args, kwargs) per op."""
  parts = [spec] if isinstance(spec, str) else list(spec)
  ops_text = [op.strip() for part in parts for op in part.split("|")]
  if not all(ops_text):
    raise ValueError(f"Empty op in preprocessing spec {spec!r}.")
  return [_parse_op(op) for op in ops_text]


def _build_op(name: str, args, kwargs, training: bool) -> ops.Op:
  return OPS.build(name, *args, training=training, **kwargs)


def get_preprocess_fn(spec: Spec, *, training: bool
                     ) -> Callable[[dict], dict]:
  """Composes the ops of `spec` into one function on example dicts.

  Args:
    spec: `"op1(args)|op2|..."` or a list of such strings.
    training: random augmentation (True) or deterministic eval behaviour.

  Returns:
    fn(example) -> example. Random ops are seeded by `example[SEED_KEY]` when
    present (`make_dataset` attaches it); the key is removed from the output.

  Raises:
    ValueError: unknown op (the message lists the valid ones) or bad
      arguments (the message names the op and its usage).
  """
  op_fns = [_build_op(name, args, kwargs, training)
            for name, args, kwargs in parse_spec(spec)]

  def preprocess(example):
    for op_fn in op_fns:
      example = op_fn(example)
    return {k: v for k, v in example.items() if k != SEED_KEY}
  return preprocess
