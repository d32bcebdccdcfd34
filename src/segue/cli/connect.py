"""How every command reaches the controller: the typed client (``segue.clients.controller``)
used synchronously through ``segue.clients.base.Blocking``. Commands name routes only through
the client's methods; they never build a URL or a path.

    with controller(url) as c:
        hosts = c.run(c.client.list_hosts())

Over TCP the client sends an API token: ``segue --token TOKEN ...`` (``use_token``), else
``$SEGUE_TOKEN``, else ``~/.config/segue/token`` (``segue.clients.controller.resolve_token``).
"""

from __future__ import annotations

import typer

from segue.clients.base import Blocking
from segue.clients.controller import ControllerClient

URL = typer.Option(None, "--url", help="Controller URL (http://... or unix:PATH); default "
                   "$SEGUE_URL, else the lab controller's socket, else http://127.0.0.1:7700.")
# set once per invocation by the root command's --token
_session: dict[str, str | None] = {"token": None}


def use_token(token: str | None) -> None:
    """The API token every command of this invocation sends over TCP (None: as
    ``resolve_token`` finds one)."""
    _session["token"] = token


def controller(url: str | None) -> Blocking[ControllerClient]:
    """The controller at ``url`` (or where ``resolve_url`` finds it), for blocking calls."""
    return Blocking(ControllerClient.from_env(url, _session["token"]))
