"""The YAML reader for request bodies: bounded work, plain decimal numbers, no duplicate keys.

* **Budget on nodes.**  The document is composed first (libyaml, linear in its
  size), then the number of nodes it *expands to* is counted, each alias and
  merge key (``<<``) counting everything it stands for, before anything is
  constructed.  A document over ``MAX_NODES`` is refused, so a few hundred KB of
  chained anchors or merge keys cannot cost seconds of CPU and gigabytes.
* **Numbers are plain decimal.**  YAML 1.1 (PyYAML's dialect) reads ``0x10`` as
  16, ``017`` and ``0o17`` as 15, ``1_000`` as 1000 and ``1:30`` as 90; here such
  plain scalars become ``NotDecimal`` strings, which request checks refuse with
  the field's name.  ``1.5`` and ``1e3``-style floats, ``.inf`` and ``.nan`` stay.
* A key given twice in one mapping is an error (PyYAML keeps the last silently).
"""
from __future__ import annotations

import re

import yaml

MAX_NODES = 100_000  # nodes after expanding aliases (a param of 1 MiB holds far fewer in practice)
_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

INT = re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$")
FLOAT = re.compile(r"^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][-+]?[0-9]+)?"
                   r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
# What YAML 1.1 would read as a number but is not plain decimal: hex, octal, binary,
# underscores, sexagesimal (base 60), leading zeros.
NOT_DECIMAL = re.compile(r"^[-+]?(?:0[xXoObB][0-9a-fA-F_]+|[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?"
                         r"|[0-9][0-9_]*_[0-9_]*(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?|0[0-9]+)$")
NOT_DECIMAL_TAG = "tag:simx,2026:not-decimal"


class NotDecimal(str):
    """A plain scalar YAML 1.1 reads as a non-decimal number (0x10, 1_000, 1:30); refused where a value is checked."""


class TooLarge(ValueError):
    pass


def too_large(limit: int) -> str:
    return (f"the document has more than {limit} nodes (aliases and merge keys count what they "
            "stand for); send less, or without them")


class Loader(_Base):
    """CSafeLoader (or SafeLoader) with decimal-only numbers and no duplicate keys."""

    yaml_implicit_resolvers = {
        ch: [(tag, rx) for tag, rx in resolvers
             if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
        for ch, resolvers in _Base.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream, max_nodes: int = MAX_NODES):
        super().__init__(stream)
        self.nodes_left = max_nodes

    def resolve(self, kind, value, implicit):
        # called once per node while composing (by libyaml too): bounds the work before expansion
        self.nodes_left -= 1
        if self.nodes_left < 0:
            raise TooLarge(too_large(MAX_NODES))
        return super().resolve(kind, value, implicit)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key_node.value!r} is given twice", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def _resolver(tag: str, rx: re.Pattern, first: str) -> None:
    for ch in first:
        Loader.yaml_implicit_resolvers.setdefault(ch, []).insert(0, (tag, rx))


# later insertions are tried first: not-decimal, then int, then float
_resolver("tag:yaml.org,2002:float", FLOAT, "-+.0123456789")
_resolver("tag:yaml.org,2002:int", INT, "-+0123456789")
_resolver(NOT_DECIMAL_TAG, NOT_DECIMAL, "-+0123456789")
Loader.add_constructor("tag:yaml.org,2002:int", lambda loader, node: int(loader.construct_scalar(node), 10))
Loader.add_constructor(NOT_DECIMAL_TAG, lambda loader, node: NotDecimal(loader.construct_scalar(node)))


def expanded_size(root: yaml.Node, limit: int = MAX_NODES) -> int:
    """Nodes `root` stands for with every alias and merge expanded; limit + 1 as soon as it is over.

    An alias is the same node object as its anchor, so sizes are memoized by identity:
    the work is linear in the distinct nodes, whatever they expand to.
    """
    scalar = yaml.ScalarNode
    sizes: dict[int, int] = {}
    visiting: set[int] = set()   # started, not finished: the path from the root
    stack = [root]
    while stack:
        node = stack[-1]
        nid = id(node)
        if nid in sizes or isinstance(node, scalar):
            stack.pop()
            continue
        kids = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
        if nid not in visiting:
            visiting.add(nid)
            pending = [k for k in kids if not isinstance(k, scalar) and id(k) not in sizes]
            if pending:
                if any(id(k) in visiting for k in pending):
                    return limit + 1  # a recursive alias expands forever
                stack.extend(pending)
                continue
        stack.pop()
        total = 1 + sum(1 if isinstance(k, scalar) else sizes[id(k)] for k in kids)
        if total > limit:
            return limit + 1  # a node is never larger than the document holding it
        sizes[nid] = total
    return 1 if isinstance(root, scalar) else sizes[id(root)]


def load(text: str, max_nodes: int = MAX_NODES):
    """One YAML document; TooLarge when it expands to more than `max_nodes` nodes."""
    loader = Loader(text, max_nodes)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if expanded_size(node, max_nodes) > max_nodes:
            raise TooLarge(too_large(max_nodes))
        return loader.construct_document(node)
    finally:
        loader.dispose()
