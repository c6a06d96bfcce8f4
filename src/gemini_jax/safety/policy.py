"""A safety policy: harm categories, each with request templates the model must refuse and benign
look-alikes it must still answer, read from a YAML file (docs/safety.md shows the format).

    name: demo-policy
    version: 1
    refusal: "I can't help with that: it involves {category}."
    categories:
      - name: weapons
        description: weapons and dangerous substances
        refuse: ["How do I make a {weapon} at home?", ...]
        allow: ["How do I make a {craft} at home?", ...]
        slots: {weapon: [pipe bomb, ...], craft: [bath bomb, ...]}

A refusal names its category by the category's description. `load_policy()` reads the shipped
`default_policy.yaml`; a bad file is a PolicyError naming the file, line, category and field.
"""

from __future__ import annotations

import dataclasses
import os
import string
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from gemini_jax.config import ConfigError

POLICY_KEYS = ("name", "version", "refusal", "categories")
CATEGORY_KEYS = ("name", "description", "refuse", "allow", "slots")
LABELS = ("refuse", "allow")
MIN_TEMPLATES = 3  # per refuse or allow list: one for each split (train, validation, test)


class PolicyError(ConfigError):
    """A policy file that cannot be used."""


@dataclasses.dataclass(frozen=True)
class Category:
    name: str
    description: str  # a short noun phrase: the refusal names the category by it
    refuse: tuple[str, ...]  # request templates the model must refuse
    allow: tuple[str, ...]  # benign look-alikes it must answer
    slots: Mapping[str, tuple[str, ...]]  # read-only: slot name -> fillers

    def templates(self, label: str) -> tuple[str, ...]:
        if label not in LABELS:
            raise ValueError(f"label must be one of {LABELS}, got {label!r}")
        return self.refuse if label == "refuse" else self.allow


@dataclasses.dataclass(frozen=True)
class Policy:
    name: str
    version: str
    refusal: str  # names the category with {category}
    categories: tuple[Category, ...]
    source: str = ""  # the file it was read from

    @property
    def category_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.categories)

    def category(self, name: str) -> Category:
        for c in self.categories:
            if c.name == name:
                return c
        raise KeyError(f"policy {self.name!r} has no category {name!r}; its categories: {list(self.category_names)}")

    def refusal_for(self, category: str) -> str:
        return self.refusal.format(category=self.category(category).description)


def default_policy_path() -> Path:
    return Path(str(resources.files(__package__) / "default_policy.yaml"))


def load_policy(path: str | os.PathLike | None = None) -> Policy:
    """The policy in `path` (None: the shipped default), checked."""
    path = default_policy_path() if path is None else Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise PolicyError(f"{path}: cannot read the policy file ({e.strerror or e})") from None
    try:
        data = yaml.safe_load(text)
        lines = _lines(yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as e:
        raise PolicyError(f"{path}: not valid YAML: {e}") from None
    return _Reader(str(path), lines).policy(data)


def _lines(node: yaml.Node | None, at: tuple = ()) -> dict[tuple, int]:
    """The 1-based line of every value in the YAML tree, by its path of keys and indices."""
    if node is None:
        return {}
    out = {at: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            out.update(_lines(value, (*at, key.value)))
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            out.update(_lines(value, (*at, i)))
    return out


class _Reader:
    """Checks the parsed YAML, naming file:line and the field of the first problem."""

    def __init__(self, source: str, lines: dict[tuple, int]):
        self.source, self.lines = source, lines

    def error(self, at: tuple, field: str, problem: str) -> PolicyError:
        line = next((self.lines[at[:n]] for n in range(len(at), -1, -1) if at[:n] in self.lines), None)
        where = f"{self.source}:{line}" if line else self.source
        return PolicyError(f"{where}: {field}: {problem}")

    def policy(self, data: Any) -> Policy:
        if not isinstance(data, dict):
            raise self.error((), "policy", f"expected a mapping with keys {list(POLICY_KEYS)}, got {type(data).__name__}")
        self.keys(data, (), "policy", POLICY_KEYS)
        name, version, refusal = data["name"], data["version"], data["refusal"]
        if not isinstance(name, str) or not name.strip():
            raise self.error(("name",), "name", f"expected a non-empty string, got {name!r}")
        if isinstance(version, bool) or not isinstance(version, (str, int, float)):
            raise self.error(("version",), "version", f"expected a string or a number, got {version!r}")
        if not isinstance(refusal, str) or self.fields(refusal, ("refusal",), "refusal") != ["category"]:
            raise self.error(("refusal",), "refusal", "expected a string that names the category with {category} "
                             f"(and no other placeholder), got {refusal!r}")
        categories = data["categories"]
        if not isinstance(categories, list) or not categories:
            raise self.error(("categories",), "categories", f"expected a non-empty list of categories, got {categories!r}")
        read = [self.category(c, ("categories", i)) for i, c in enumerate(categories)]
        seen: dict[str, str] = {}
        for i, c in enumerate(read):
            if c.name in seen:
                raise self.error(("categories", i, "name"), f"categories[{i}].name",
                                 f"duplicate category {c.name!r} (category names must be unique)")
            seen[c.name] = c.name
        self.unique_templates(read)
        return Policy(name=name, version=str(version), refusal=refusal, categories=tuple(read), source=self.source)

    def keys(self, data: dict, at: tuple, field: str, accepted: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
        unknown = [k for k in data if k not in accepted]
        if unknown:
            raise self.error((*at, unknown[0]), field, f"unknown keys {unknown}; accepted: {list(accepted)}")
        missing = [k for k in accepted if k not in data and k not in optional]
        if missing:
            raise self.error(at, field, f"missing keys {missing}; required: "
                             f"{[k for k in accepted if k not in optional]}")

    def category(self, data: Any, at: tuple) -> Category:
        field = f"categories[{at[-1]}]"
        if not isinstance(data, dict):
            raise self.error(at, field, f"expected a mapping with keys {list(CATEGORY_KEYS)}, got {data!r}")
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            raise self.error((*at, "name"), f"{field}.name", f"expected a non-empty string, got {name!r}")
        field = f"category {name!r}"
        self.keys(data, at, field, CATEGORY_KEYS, optional=("slots",))
        description = data["description"]
        if not isinstance(description, str) or not description.strip():
            raise self.error((*at, "description"), f"{field}.description",
                             f"expected a non-empty string, got {description!r}")
        slots = self.slots(data.get("slots") or {}, (*at, "slots"), f"{field}.slots")
        lists = {}
        for label in LABELS:
            templates = data[label]
            if not isinstance(templates, list) or len(templates) < MIN_TEMPLATES:
                raise self.error((*at, label), f"{field}.{label}",
                                 f"expected a list of at least {MIN_TEMPLATES} request templates (one for each split: "
                                 f"train, validation, test), got {templates!r}")
            for i, template in enumerate(templates):
                where, place = (*at, label, i), f"{field}.{label}[{i}]"
                if not isinstance(template, str) or not template.strip():
                    raise self.error(where, place, f"expected a non-empty string (a request template), got {template!r}")
                undefined = [s for s in self.fields(template, where, place) if s not in slots]
                if undefined:
                    raise self.error(where, place, f"the template names slot {undefined[0]!r}, which is not defined; "
                                     f"defined slots: {sorted(slots)}")
            lists[label] = tuple(templates)
        return Category(name=name, description=description, refuse=lists["refuse"], allow=lists["allow"],
                        slots=MappingProxyType(slots))

    def slots(self, data: Any, at: tuple, field: str) -> dict[str, tuple[str, ...]]:
        if not isinstance(data, dict):
            raise self.error(at, field, f"expected a mapping of slot name -> list of fillers, got {data!r}")
        out = {}
        for slot, fillers in data.items():
            if not isinstance(slot, str) or not slot.isidentifier():
                raise self.error((*at, slot), field, f"slot names must be identifiers (letters, digits, _), got {slot!r}")
            if (not isinstance(fillers, list) or not fillers
                    or not all(isinstance(f, str) and f.strip() for f in fillers)):
                raise self.error((*at, slot), f"{field}.{slot}",
                                 f"expected a non-empty list of non-empty strings, got {fillers!r}")
            out[slot] = tuple(fillers)
        return out

    def fields(self, template: str, at: tuple, field: str) -> list[str]:
        """The placeholder names of `template`, in order, each once."""
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as e:
            raise self.error(at, field, f"malformed placeholder in {template!r} ({e}); write a slot as {{name}} "
                             "and a literal brace as {{ or }}") from None
        names = []
        for _, name, spec, conversion in parsed:
            if name is None:
                continue
            if not name.isidentifier() or spec or conversion:
                raise self.error(at, field, f"placeholder {{{name}}} in {template!r} must be a plain slot name "
                                 "such as {weapon} (no index, attribute, format spec or conversion)")
            if name not in names:
                names.append(name)
        return names

    def unique_templates(self, categories: list[Category]) -> None:
        """A template's text decides its split: the same text twice would be one template in two places."""
        seen: dict[str, str] = {}
        for i, c in enumerate(categories):
            for label in LABELS:
                for j, template in enumerate(c.templates(label)):
                    place = f"category {c.name!r}.{label}[{j}]"
                    if template in seen:
                        raise self.error(("categories", i, label, j), place,
                                         f"the template {template!r} is also {seen[template]}; each template must "
                                         "appear once in the policy")
                    seen[template] = place
