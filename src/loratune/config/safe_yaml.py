"""Reading the YAML files a user gives loratune (a config, a class-weights file): UTF-8 text, YAML's safe loader,
no aliases and no key given twice; each problem is a one-line ConfigError naming the file and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from loratune.errors import ConfigError


class _AliasFound(yaml.YAMLError):
    def __init__(self, event: yaml.AliasEvent) -> None:
        super().__init__(event.anchor)
        self.anchor, self.line = event.anchor, event.start_mark.line + 1


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(key)
        self.key, self.line = key, line


class _NoAliasLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing an alias (`*name`) as soon as the parser meets it, before it is expanded.

    A config rarely needs an alias, and a few nested ones expand to billions of values (the "billion laughs"): the
    loader itself shares the nodes, but anything that walks or prints the result (a value turned into a string)
    then hangs. Anchors alone (`&name`) are harmless and left alone.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise _AliasFound(self.peek_event())
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        # YAML's loader keeps the last of two equal keys, silently: `num_epochs: 3` then `num_epochs: 30` trains 30.
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> Any:
    """The YAML document in `path`, which must be UTF-8 (a byte-order mark is allowed) and hold no alias.

    Raises:
        ConfigError: for a file that is not UTF-8, is no valid YAML, or uses an alias.
    """
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {error.start} is {error.object[error.start : error.start + 1]!r}); "
            "save it as UTF-8 and retry."
        ) from None
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except _AliasFound as alias:
        raise ConfigError(
            f"{path} uses the YAML alias *{alias.anchor} (line {alias.line}); loratune does not read aliases, "
            "which can expand without end: write the value out in full."
        ) from None
    except _DuplicateKey as duplicate:
        raise ConfigError(
            f"{path} gives {duplicate.key!r} twice (again on line {duplicate.line}); keep one, since YAML would "
            "silently use the last."
        ) from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
