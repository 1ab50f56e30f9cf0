"""YAML parsing that remembers where every key came from.

The config loader reports errors as ``file:line: key: problem``; for that it
needs the line of each mapping key and list item. We construct plain dict/list
subclasses that carry those lines, and refuse duplicate keys (PyYAML silently
keeps the last one, which would hide an operator's mistake).
"""

from __future__ import annotations

import yaml


class LinedDict(dict):
    """A dict from YAML with ``line`` (its own) and ``key_lines`` (per key)."""

    line: int = 0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.key_lines: dict = {}


class LinedList(list):
    """A list from YAML with ``line`` (its own) and ``item_lines`` (per item)."""

    line: int = 0

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.item_lines: list[int] = []


class YamlSyntaxError(ValueError):
    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.line = line


class _LinedLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _LinedLoader, node: yaml.MappingNode):
    result = LinedDict()
    result.line = node.start_mark.line + 1
    yield result
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            raise YamlSyntaxError(f"mapping key {key!r} is not a string", line)
        if key in result:
            raise YamlSyntaxError(
                f"duplicate key {key!r} (first at line {result.key_lines[key]})", line)
        result.key_lines[key] = line
        result[key] = loader.construct_object(value_node, deep=True)


def _construct_sequence(loader: _LinedLoader, node: yaml.SequenceNode):
    result = LinedList()
    result.line = node.start_mark.line + 1
    yield result
    for item in node.value:
        result.item_lines.append(item.start_mark.line + 1)
        result.append(loader.construct_object(item, deep=True))


_LinedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LinedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def parse_documents(text: str) -> list:
    """Every document of ``text`` (empty ones dropped), as ``parse`` reads one: policy
    files (``kubectl apply -f`` style) carry many, separated by ``---``."""
    return [d for d in _load_all(text) if d is not None]


def parse(text: str):
    """Parse one YAML document; raise YamlSyntaxError with a line on any problem."""
    docs = _load_all(text)
    if len(docs) > 1:
        raise YamlSyntaxError("expected one YAML document, found several", None)
    return docs[0] if docs else None


def _load_all(text: str) -> list:
    try:
        return list(yaml.load_all(text, Loader=_LinedLoader))
    except YamlSyntaxError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise YamlSyntaxError(f"invalid YAML: {exc.problem or exc}", line) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(f"invalid YAML: {exc}", None) from None
    except (ValueError, TypeError, RecursionError) as exc:
        # PyYAML's scalar constructors raise plain ValueError (e.g. bad timestamps).
        raise YamlSyntaxError(f"invalid YAML value: {exc}", None) from None
