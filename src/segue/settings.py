"""What the agent's and the controller's configurations share: TOML files read with
pydantic-settings, environment overrides, strict validation and errors that name the key.

A configuration is a ``ServiceSettings`` subclass. ``load_settings`` reads it from a TOML file,
then lets environment variables override single keys: ``<PREFIX><KEY>`` (``SEGUE_AGENT_ACCEL``),
nested keys joined by ``__`` (``SEGUE_AGENT_LISTEN__PORT``), tables and lists as JSON
(``SEGUE_AGENT_DATASTORES='{"shared": "/srv/shared"}'``). Names are case-insensitive.

Strict: the file's values must have their key's type (``port = "7600"`` is refused, as are
unknown keys, NaN and infinities, and values out of range). An environment variable is text,
so it is read as its key's type (``SEGUE_AGENT_HEARTBEAT_INTERVAL=1`` is the number 1.0);
a variable with the prefix that names no key is refused. Built in code with keyword arguments
(``AgentConfig(host=..., state_dir=...)``), a configuration reads neither file nor environment.

Errors: ``InvalidRequest`` with ``<CODE>_MISSING`` (no file at the path) or ``<CODE>_INVALID``
(unreadable TOML, an unknown key or variable, a wrong type or value), ``<CODE>`` being the
class's ``config_code`` (``AGENT_CONFIG``); a class may give some keys their own code
(``key_codes``). Messages name the file and the key; ``details["field"]`` is the dotted key.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from segue.api.base import AGENT_PORT
from segue.domain.errors import InvalidRequest

# A path given as text in the file (TOML has no path type) is still a path.
ConfigPath = Annotated[Path, Field(strict=False)]
Port = Annotated[int, Field(ge=1, le=65535)]


class ListenConfig(BaseModel):
    """Where a service listens: a TCP address and port and/or a unix socket."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    address: str | None = Field(None, description="an address of this host to listen on")
    port: Port = Field(AGENT_PORT, description="a TCP port, 1 to 65535")
    unix_socket: str | None = Field(None, description="the path of a unix socket to listen on")

    def require(self, code: str, where: str) -> None:
        """Raise InvalidRequest (``code``) naming ``where`` unless there is something to
        listen on: a service needs it, a configuration built in code for tests does not."""
        if self.address is None and self.unix_socket is None:
            raise InvalidRequest(code, f"{where}: neither listen.address nor listen.unix_socket "
                                 "is set", "set at least one of them", field="listen")


class ServiceSettings(BaseSettings):
    """Base of a service's configuration (see the module doc).

    Subclasses set ``env_prefix`` in ``model_config``, ``config_code`` and ``what``."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, strict=True,
                                      allow_inf_nan=False, env_nested_delimiter="__",
                                      case_sensitive=False)

    config_code: ClassVar[str] = "CONFIG"
    what: ClassVar[str] = "service"
    key_codes: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments only: ``load_settings`` adds the file and the environment."""
        return (init_settings,)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-able data (paths as text, unset keys as None)."""
        return self.model_dump(mode="json")

    def to_toml(self) -> str:
        """The configuration as a TOML file that ``load_settings`` reads back equal (TOML has
        no null: unset keys are left out)."""
        return tomli_w.dumps(self.model_dump(mode="json", exclude_none=True))


S = TypeVar("S", bound=ServiceSettings)
_JSON_HINT = 'give it as JSON: a table as {"key": "value"}, a list as ["a", "b"]'


class TypedEnvSource(EnvSettingsSource):
    """The environment source, reading each variable as its key's type (lax, since all
    environment values are text) and refusing variables with the prefix that name no key."""

    def __init__(self, settings_cls: type[ServiceSettings]) -> None:
        super().__init__(settings_cls)
        self.service = settings_cls

    def __call__(self) -> dict[str, Any]:
        prefix = (self.env_prefix or "").lower()
        names = set(self.settings_cls.model_fields)
        for name in self.env_vars:
            key = name.lower().removeprefix(prefix).split("__", 1)[0]
            if name.lower().startswith(prefix) and key not in names:
                raise _invalid(self.service, f"environment variable {name.upper()} names "
                               "no configuration key", "unset it or fix its name", (key,))
        return super().__call__()

    def prepare_field_value(self, field_name: str, field: FieldInfo, value: Any,
                            value_is_complex: bool) -> Any:
        try:
            value = super().prepare_field_value(field_name, field, value, value_is_complex)
        except ValueError as err:  # a table or list that is not JSON
            variable = f"{self.env_prefix}{field_name}".upper()
            raise _invalid(self.service, f"environment variable {variable} is not valid JSON: "
                           f"{err}", _JSON_HINT, (field_name,)) from err
        if value is None:
            return None
        kind: Any = field.annotation
        if field.metadata:
            kind = Annotated[(kind, *field.metadata)]
        adapter: TypeAdapter[Any] = TypeAdapter(kind)
        try:
            typed = adapter.validate_python(value, strict=False)
        except ValidationError as err:
            raise _from_errors(self.service, err, self._variable(field_name, err),
                               prefix=(field_name,)) from err
        # Only what the environment set: the file's other keys of a table stay.
        return adapter.dump_python(typed, exclude_unset=True)

    def _variable(self, field_name: str, err: ValidationError) -> str:
        """``environment variable NAME`` for the variable that set the value at fault: the
        nested one (``SEGUE_AGENT_LISTEN__PORT``) if set, else the key's own."""
        loc = [field_name, *(str(p) for p in err.errors()[0]["loc"])]
        name = f"{self.env_prefix}{'__'.join(loc[:2])}"
        if name.lower() not in self.env_vars:  # the table was given whole, as JSON
            name = f"{self.env_prefix}{field_name}"
        return f"environment variable {name.upper()}"


def load_settings(cls: type[S], path: Path) -> S:
    """The configuration in the TOML file at ``path`` with environment overrides.

    Raises InvalidRequest (see the module doc)."""
    path = path.expanduser()
    if not path.is_file():
        raise InvalidRequest(f"{cls.config_code}_MISSING", f"no {cls.what} configuration at {path}",
                             f"write one (see docs/examples/{path.name}) or pass --config FILE")
    try:
        file_source = TomlConfigSettingsSource(cls, toml_file=path)
    except (OSError, ValueError) as err:  # tomllib.TOMLDecodeError is a ValueError
        raise InvalidRequest(f"{cls.config_code}_INVALID", f"{path} is not readable TOML: {err}",
                             "fix the file's syntax") from err
    try:
        return cls(_build_sources=((TypedEnvSource(cls), file_source), {}))
    except ValidationError as err:
        raise _from_errors(cls, err, str(path)) from err


def settings_from_dict(cls: type[S], data: Mapping[str, Any]) -> S:
    """A configuration from data shaped like its TOML file (strict, no environment).

    Raises InvalidRequest (``<CODE>_INVALID``, or a key's own code) naming the key."""
    try:
        return cls(**dict(data))
    except ValidationError as err:
        raise _from_errors(cls, err, f"the {cls.what} configuration") from err


def _invalid(cls: type[ServiceSettings], message: str, hint: str,
             loc: tuple[int | str, ...]) -> InvalidRequest:
    """InvalidRequest for the key at ``loc``, with that top-level key's own code if it has one."""
    key = ".".join(str(part) for part in loc)
    code = cls.key_codes.get(str(loc[0]) if loc else "", f"{cls.config_code}_INVALID")
    return InvalidRequest(code, message, hint, field=key or None)


def _from_errors(cls: type[ServiceSettings], err: ValidationError, where: str,
                 prefix: tuple[str, ...] = ()) -> InvalidRequest:
    """The first of pydantic's errors as InvalidRequest naming ``where`` and the key."""
    errors = err.errors(include_url=False)
    first: ErrorDetails = errors[0]
    loc = (*prefix, *first["loc"])
    key = ".".join(str(part) for part in loc)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if first["type"] == "extra_forbidden":
        return _invalid(cls, f"{where}: unknown key {key}{more}",
                        "remove it or fix its spelling (see docs/examples/)", loc)
    if first["type"] == "missing":
        return _invalid(cls, f"{where}: {key} is required{more}", f"add {key}", loc)
    what = f"{key}: " if key else ""
    got = f" (got {first['input']!r})" if loc else ""
    message = f"{where}: {what}{_problem(first)}{got}{more}"
    return _invalid(cls, message, _hint(cls, loc) or f"fix {key or 'the configuration'}", loc)


def _problem(error: ErrorDetails) -> str:
    """What is wrong, in words (the key's description, given as the hint, says the rest)."""
    if error["type"] == "string_pattern_mismatch":
        return "not an accepted value"  # the regular expression would say little
    # A check across keys raises ValueError: its text is the message, without pydantic's
    # "Value error, " in front.
    return str(error.get("ctx", {}).get("error") or error["msg"])


def _hint(cls: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """The description of the deepest key at fault that has one: it says what it takes."""
    hint, model = "", cls
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            break
        hint = field.description or hint
        if not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            break
        model = field.annotation
    return hint
