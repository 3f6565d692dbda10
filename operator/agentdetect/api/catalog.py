"""The built-in catalog (``catalog.yaml``): providers, file presets and process presets."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

CATALOG_FILE = Path(__file__).with_name("catalog.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Provider(_Strict):
    category: Literal["llm", "vectordb", "local-llm"]
    description: str
    hostnames: tuple[str, ...] = ()
    ports: tuple[int, ...]
    any_address: bool = Field(False, alias="anyAddress")
    tenant_suffixes: tuple[str, ...] = Field((), alias="tenantSuffixes")


class MatchRule(_Strict):
    """One string match; exactly one of the three operators."""

    equal: str | None = None
    prefix: str | None = None
    postfix: str | None = None

    @model_validator(mode="after")
    def _one_operator(self) -> MatchRule:
        if sum(v is not None for v in (self.equal, self.prefix, self.postfix)) != 1:
            raise ValueError("exactly one of equal, prefix, postfix")
        return self

    @property
    def operator(self) -> Literal["Equal", "Prefix", "Postfix"]:
        if self.equal is not None:
            return "Equal"
        return "Prefix" if self.prefix is not None else "Postfix"

    @property
    def value(self) -> str:
        return next(v for v in (self.equal, self.prefix, self.postfix) if v is not None)


class Preset(_Strict):
    description: str
    rules: tuple[MatchRule, ...]


class Catalog(_Strict):
    providers: dict[str, Provider]
    file_presets: dict[str, Preset] = Field(alias="filePresets")
    process_presets: dict[str, Preset] = Field(alias="processPresets")


@functools.cache
def load(path: Path = CATALOG_FILE) -> Catalog:
    return Catalog.model_validate(yaml.safe_load(path.read_text()))
