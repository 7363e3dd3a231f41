"""infra/k8s, offline: every overlay renders with kustomize and every resource validates against
the Kubernetes OpenAPI schemas or the pinned CRDs; the generated topics are current; the worker
StatefulSet and its KEDA ScaledObject keep the promises the README makes."""

from __future__ import annotations

import copy
import dataclasses
import math
import re

import jsonschema
import kubernetes_validate
import pytest
from k8s_support import OVERLAYS, REPO, build, container, crd_schemas, env, find, validate

from inference_consumer.config import RETRY_VARIABLES, WorkerConfig
from infra.capacity import plan_capacity
from infra.strimzi import GENERATED, render_topics, resource_name
from infra.topics import load_topic_specs


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, build(request.param)


def test_every_resource_validates(rendered) -> None:
    overlay, resources = rendered
    kinds = set()
    for resource in resources:
        try:
            validate(resource)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
            where = "/".join(str(p) for p in exc.absolute_path)
            name = f"{resource['kind']}/{resource['metadata']['name']}"
            pytest.fail(f"{overlay}: {name} invalid at {where}: {exc.message}")
        kinds.add(resource["kind"])
    expected = {
        "Kafka", "KafkaNodePool", "KafkaTopic", "StatefulSet", "ScaledObject",
        "PodDisruptionBudget", "Deployment", "Service", "ConfigMap", "Secret",
        "ServiceMonitor", "PodMonitor", "PrometheusRule", "Namespace",
    }  # fmt: skip
    assert expected <= kinds, f"{overlay} lacks {expected - kinds}"


def test_custom_kinds_are_checked_against_their_crds(rendered) -> None:
    _, resources = rendered
    core = ("v1", "apps/v1", "policy/v1")
    custom = {(r["apiVersion"], r["kind"]) for r in resources if r["apiVersion"] not in core}
    assert custom <= set(crd_schemas()), custom - set(crd_schemas())


@pytest.mark.parametrize(
    ("kind", "mutate", "message"),
    [
        ("ScaledObject", lambda r: r["spec"].update(maxReplicas=3), "maxReplicas"),
        ("KafkaTopic", lambda r: r["spec"].update(partitions="many"), "many"),
        ("StatefulSet", lambda r: r["spec"].update(replica=2), "replica"),
        ("Kafka", lambda r: r["spec"]["kafka"]["listeners"][0].update(port="x"), "x"),
    ],
)
def test_a_misspelt_or_mistyped_field_is_caught(kind, mutate, message) -> None:
    resource = copy.deepcopy(next(r for r in build("dev") if r["kind"] == kind))
    mutate(resource)
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)) as exc:
        validate(resource)
    assert message in str(exc.value)


@pytest.mark.parametrize("profile", list(GENERATED))
def test_generated_topics_are_current(profile) -> None:
    path = GENERATED[profile]
    assert path.read_text() == render_topics(profile), (
        f"{path.relative_to(REPO)} is stale: run `make generate`"
    )


def test_overlays_deploy_every_topic_of_their_profile() -> None:
    for overlay, profile in (("dev", None), ("production", "production")):
        topics = {r["spec"]["topicName"]: r for r in build(overlay) if r["kind"] == "KafkaTopic"}
        for spec in load_topic_specs(profile=profile):
            resource = topics[spec.name]
            assert resource["metadata"]["name"] == resource_name(spec.name)
            assert resource["spec"]["partitions"] == spec.partitions
            assert resource["spec"]["replicas"] == spec.replication_factor
            assert resource["spec"]["config"] == spec.config
            assert resource["metadata"]["labels"]["strimzi.io/cluster"] == "f2p"


def test_workers_are_a_statefulset_with_stable_ids_probes_and_drain(rendered) -> None:
    overlay, resources = rendered
    sts = find(resources, "StatefulSet", "f2p-worker")
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    worker = container(sts, "worker")
    args = worker["args"]
    assert args[args.index("--worker-id") + 1] == "$(POD_NAME)"
    variables = env(worker)
    assert variables["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    port = int(args[args.index("--metrics-port") + 1])
    assert variables["F2P_WORKER_METRICS_HOST"] == "0.0.0.0"
    assert worker["ports"][0]["containerPort"] == port
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert "kill -TERM 1" in " ".join(worker["lifecycle"]["preStop"]["exec"]["command"])
    pod = sts["spec"]["template"]["spec"]
    shutdown = float(variables["F2P_WORKER_SHUTDOWN_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] > shutdown
    if overlay == "production":
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] and pod["tolerations"]
    pdb = find(resources, "PodDisruptionBudget", "f2p-worker")
    assert (
        pdb["spec"]["selector"]["matchLabels"].items()
        <= sts["spec"]["selector"]["matchLabels"].items()
    )


def test_production_numbers_are_the_capacity_models() -> None:
    """The README's target (600 req/s, fast, 1024x1024): drain bound, grace period and KEDA
    threshold in the manifests are what `f2p capacity` computes."""
    plan = plan_capacity(600, "fast", 1024, 1024)
    resources = build("production")
    sts = find(resources, "StatefulSet", "f2p-worker")
    variables = env(container(sts, "worker"))
    assert int(variables["F2P_WORKER_MAX_IN_FLIGHT"]) == plan.max_in_flight
    assert float(variables["F2P_WORKER_SHUTDOWN_TIMEOUT_S"]) == plan.shutdown_timeout_s
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == (
        plan.termination_grace_s
    )
    assert int(variables.get("F2P_ENGINE_MAX_BATCH", 4)) == plan.max_batch
    scaled = find(resources, "ScaledObject", "f2p-worker")
    trigger = scaled["spec"]["triggers"][0]["metadata"]
    assert int(trigger["lagThreshold"]) == plan.keda_lag_threshold
    assert int(trigger["activationLagThreshold"]) == plan.keda_activation_lag_threshold
    assert trigger["consumerGroup"] == WorkerConfig().group_id
    assert trigger["allowIdleConsumers"] == "false"


def _worker_lanes(profile: str | None) -> dict[str, int]:
    """Partitions of the internal lanes, the topics the workers serve."""
    specs = load_topic_specs(profile=profile)
    lanes = {s.name: s.partitions for s in specs if s.name.startswith("f2p.lanes.")}
    assert lanes, "no f2p.lanes.* topics in infra/topics.toml"
    return lanes


def _check_max_replicas(overlay: str, profile: str | None) -> None:
    scaled = find(build(overlay), "ScaledObject", "f2p-worker")
    lanes = _worker_lanes(profile)
    assert scaled["spec"]["maxReplicaCount"] <= min(lanes.values()), (
        f"{overlay}: maxReplicaCount {scaled['spec']['maxReplicaCount']} > partitions {lanes}"
    )
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]


def test_dev_max_replicas_do_not_exceed_partitions() -> None:
    _check_max_replicas("dev", None)


def test_production_max_replicas_do_not_exceed_partitions() -> None:
    _check_max_replicas("production", "production")


def test_worker_variables_parse_with_the_real_config(rendered, monkeypatch) -> None:
    """Every literal F2P_WORKER_* value of the StatefulSet is one WorkerConfig accepts."""
    overlay, resources = rendered
    worker = container(find(resources, "StatefulSet", "f2p-worker"), "worker")
    literal = {k: v for k, v in env(worker).items() if k.startswith("F2P_WORKER_")}
    for name in [f"F2P_WORKER_{f.name.upper()}" for f in dataclasses.fields(WorkerConfig)]:
        monkeypatch.delenv(name, raising=False)
    for name, value in literal.items():
        assert isinstance(value, str), f"{overlay}: {name} is not a literal"
        monkeypatch.setenv(name, value)
    config = WorkerConfig.from_env(worker_id="f2p-worker-0")
    assert config.group_protocol == "consumer"  # the range assignor: every lane spread evenly
    assert config.max_in_flight == int(literal["F2P_WORKER_MAX_IN_FLIGHT"])
    assert config.session_timeout_ms is None  # chosen by the cluster's size at start-up


def test_admission_args_and_variables_parse_with_the_real_cli(rendered, monkeypatch) -> None:
    """The Deployment's args are flags `f2p streams admission` takes, and its config (flags,
    then F2P_ADMISSION_*) validates: a unique instance id per pod, metrics for probes."""
    from streams.admission.config import AdmissionConfig
    from streams.cli import streams_cmd

    _, resources = rendered
    admission = container(find(resources, "Deployment", "f2p-admission"), "admission")
    variables = env(admission)
    assert variables["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    args = [a.replace("$(POD_NAME)", "f2p-admission-5c9d7-x2vq4") for a in admission["args"]]
    assert args[:2] == ["streams", "admission"], args
    for name in [f"F2P_ADMISSION_{f.name.upper()}" for f in dataclasses.fields(AdmissionConfig)]:
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        if name.startswith("F2P_ADMISSION_"):
            monkeypatch.setenv(name, value)
    params = streams_cmd.commands["admission"].make_context("admission", args[2:]).params
    config = AdmissionConfig.from_env(**params)
    assert config.instance_id == "f2p-admission-5c9d7-x2vq4"
    assert config.metrics_host == "0.0.0.0"
    assert admission["ports"][0]["containerPort"] == config.metrics_port
    assert admission["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert admission["livenessProbe"]["httpGet"]["path"] == "/healthz"
    grace = find(resources, "Deployment", "f2p-admission")["spec"]["template"]["spec"]
    assert grace["terminationGracePeriodSeconds"] > config.shutdown_timeout_s


def _known_variables() -> set[str]:
    from streams.admission.config import AdmissionConfig

    settings = (REPO / "connectors" / "settings.py").read_text()
    known = set(re.findall(r'"(F2P_[A-Z0-9_]+)"', settings))
    known |= {f"F2P_WORKER_{f.name.upper()}" for f in dataclasses.fields(WorkerConfig)}
    known |= {f"F2P_ADMISSION_{f.name.upper()}" for f in dataclasses.fields(AdmissionConfig)}
    known |= set(RETRY_VARIABLES.values())
    try:  # the engine settings moved to engines/config.py on main (issue 9)
        from inference_consumer.engines.config import _ENV  # type: ignore[attr-defined]
    except ImportError:
        from inference_consumer.engines.factory import _ENV

    known |= {variable for variable, _ in _ENV.values()}
    return known | {"F2P_LOG_FORMAT", "F2P_LOG_LEVEL"}


def test_every_f2p_variable_is_one_the_code_reads(rendered) -> None:
    overlay, resources = rendered
    known = _known_variables()
    used = set()
    for resource in resources:
        if resource["kind"] == "ConfigMap":
            used |= {k for k in resource.get("data", {}) if k.startswith("F2P_")}
        if resource["kind"] in ("StatefulSet", "Deployment"):
            for c in resource["spec"]["template"]["spec"]["containers"]:
                used |= {n for n in env(c) if n.startswith("F2P_")}
    unknown = {v for v in used if v not in known and not v.startswith("F2P_KAFKA_CONFIG_")}
    assert not unknown, f"{overlay}: variables no code reads: {sorted(unknown)}"
    assert math.isfinite(len(used)) and used


def test_crd_sources_are_recorded() -> None:
    readme = (REPO / "infra" / "k8s" / "crds" / "README.md").read_text()
    for path in (REPO / "infra" / "k8s" / "crds").glob("*.yaml"):
        assert path.name in readme, f"{path.name}: source and version not recorded"
