"""Multi-document YAML with line numbers (policy files: ``kubectl apply -f`` style).

``config.yamlsource.parse`` takes exactly one document (a node config); policy
files carry many, separated by ``---``. This reuses its loader, so every mapping
is a ``LinedDict`` (key lines) and every list a ``LinedList`` (item lines), and
duplicate keys are refused the same way.
"""

from __future__ import annotations

import yaml

from config.yamlsource import YamlSyntaxError, _LinedLoader


def parse_documents(text: str) -> list:
    """Every document of ``text`` (empty documents dropped); YamlSyntaxError with a line."""
    try:
        docs = list(yaml.load_all(text, Loader=_LinedLoader))
    except YamlSyntaxError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise YamlSyntaxError(f"invalid YAML: {exc.problem or exc}", line) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(f"invalid YAML: {exc}", None) from None
    except (ValueError, TypeError, RecursionError) as exc:
        raise YamlSyntaxError(f"invalid YAML value: {exc}", None) from None
    return [d for d in docs if d is not None]
