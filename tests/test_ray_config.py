"""The ray backend's configuration, without a cluster: the Serve config in the repository
is valid for Serve and builds, and settings map to the deployments' options."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray import serve

from app.distributed import deployments, serving
from app.runtime import GENERATE_LANE, STYLIZE_LANE
from app.settings import PROJECT_ROOT
from tests.conftest import make_settings

SERVE_YAML = Path(PROJECT_ROOT) / "deploy" / "serve.yaml"


def test_the_serve_config_in_the_repository_is_valid_and_builds() -> None:
    from ray.serve.schema import ServeDeploySchema

    document = yaml.safe_load(SERVE_YAML.read_text())
    config = ServeDeploySchema.model_validate(document)
    (application,) = config.applications
    module, _, name = application.import_path.partition(":")
    assert (module, name) == ("app.distributed.deployments", "build_app")
    built = deployments.build_app(dict(application.args))
    assert isinstance(built, serve.Application)


def test_settings_map_to_engine_replicas_resources_and_backpressure() -> None:
    settings = make_settings(
        ray_engine_replicas=2, ray_engine_gpus=0.5, ray_engine_resources={"gpu_node": 1},
        ray_max_replicas_per_node=1, ray_max_ongoing_requests=16, ray_max_queued_requests=8)
    options = deployments._engine_options(settings, STYLIZE_LANE)
    assert options["name"] == "stylize-engine"
    assert options["num_replicas"] == 2 and "autoscaling_config" not in options
    assert options["ray_actor_options"]["num_gpus"] == 0.5
    assert options["ray_actor_options"]["resources"] == {"gpu_node": 1}
    assert options["max_replicas_per_node"] == 1
    assert (options["max_ongoing_requests"], options["max_queued_requests"]) == (16, 8)


def test_a_maximum_above_the_replica_count_turns_autoscaling_on() -> None:
    settings = make_settings(ray_engine_replicas=1, ray_engine_max_replicas=4,
                             ray_engine_gpus=1)
    options = deployments._engine_options(settings, GENERATE_LANE)
    assert "num_replicas" not in options
    scaling = options["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (1, 4)


def test_several_ingress_replicas_without_a_shared_job_store_are_refused() -> None:
    with pytest.raises(serving.SettingsError, match="ATELIER_JOB_STORE_URL"):
        serving.check(make_settings(ray_ingress_replicas=2))
    serving.check(make_settings(ray_ingress_replicas=2, job_store_url="redis://127.0.0.1:1/0"))


def test_the_cli_refuses_those_settings_with_a_message_not_a_traceback() -> None:
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--backend", "ray"],
        env={**os.environ, "ATELIER_RAY_INGRESS_REPLICAS": "2", "ATELIER_JOB_STORE_URL": ""},
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert "ATELIER_JOB_STORE_URL" in done.stderr and "Traceback" not in done.stderr
