"""The per-host migration limits in the controller's configuration, and how the CLI shows a
queued job."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from segue.cli.migrations import phase_label
from segue.controller.config import controller_config_from_dict, load_controller_config
from segue.controller.scheduler import HostLimits
from segue.domain.errors import InvalidRequest

URL = {"database_url": "sqlite:///x.db"}


def test_limits_default_to_two_each_way() -> None:
    assert controller_config_from_dict(URL).limits == HostLimits(2, 2)


def test_limits_are_read_and_written_back() -> None:
    config = controller_config_from_dict(
        {**URL, "max_outgoing_per_host": 1, "max_incoming_per_host": 4})
    assert config.limits == HostLimits(1, 4)
    assert controller_config_from_dict(config.to_dict()) == config


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(InvalidRequest) as err:
        controller_config_from_dict({**URL, "max_incoming_per_host": 0})
    assert err.value.code == "MIGRATION_LIMIT_INVALID"


def test_a_limit_below_one_in_the_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "controller.toml"
    path.write_text('database_url = "sqlite:///x.db"\nmax_outgoing_per_host = 0\n')
    with pytest.raises(InvalidRequest) as err:
        load_controller_config(path)
    assert err.value.code == "MIGRATION_LIMIT_INVALID"
    assert "max_outgoing_per_host" in err.value.message and str(path) in err.value.message


@pytest.mark.parametrize(("job", "shown"), [
    ({"phase": "queued", "queue_position": 2}, "queued (2)"),
    ({"phase": "monitor", "queue_position": None}, "monitor"),
])
def test_a_queued_job_shows_its_place(job: dict[str, object], shown: str) -> None:
    assert phase_label(SimpleNamespace(**job)) == shown
