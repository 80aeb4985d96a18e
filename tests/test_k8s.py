"""Kubernetes objects: rendered from code (orchestration.k8s), validated against the
Kubernetes 1.37 schemas (kubernetes-validate) or, for SparkApplications, against the fields
their CRD requires; infra/k8s/ equal to the renderer's output; and what the daily DAG submits
in kubernetes mode for a ds, as built by the provider's operators themselves."""
from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from orchestration.config import PipelineConfig, load_config
from orchestration.k8s import (
    IMAGE_ROOT,
    INDEX_STAGE_LABEL,
    INDEX_STAGES,
    PVC,
    RDZV_PORT,
    SPARK_SA,
    TRAIN_SERVICE,
    UID,
    dump,
    example_config,
    examples,
    index_job,
    setup_objects,
    spark_application,
    training_job,
)
from orchestration.steps import plan_training, train_flags
from tests.conftest import REPO_ROOT

K8S_VERSION = "1.37.0"
DS = "2026-11-28"
IMAGE = "registry.example.com/mind/mind-pipeline:0.1.0"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

# What the SparkApplication CRD (kubeflow/spark-operator, sparkoperator.k8s.io v1beta2,
# charts/spark-operator-chart/crds, checked 2026-12) requires: spec.required, and the type /
# enum / minimum of each field the renderer sets.
CRD_REQUIRED = {"driver", "executor", "mainApplicationFile", "sparkVersion", "type"}
CRD_FIELDS = {
    "type": (str, {"Java", "Python", "Scala", "R"}), "mode": (str, {"cluster", "client"}),
    "pythonVersion": (str, {"2", "3"}), "sparkVersion": (str, None),
    "mainApplicationFile": (str, None), "arguments": (list, None), "image": (str, None),
    "imagePullPolicy": (str, None), "sparkConf": (dict, None), "restartPolicy": (dict, None),
    "volumes": (list, None), "driver": (dict, None), "executor": (dict, None),
}
CRD_POD_FIELDS = {"cores": int, "memory": str, "serviceAccount": str, "instances": int,
                  "labels": dict, "securityContext": dict, "podSecurityContext": dict,
                  "volumeMounts": list, "env": list}


def validate_core(obj: dict) -> None:
    """Strict schema validation (unknown fields rejected) of a core Kubernetes object."""
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def check_spark_application(app: dict) -> None:
    assert app["apiVersion"] == "sparkoperator.k8s.io/v1beta2"
    assert app["kind"] == "SparkApplication" and app["metadata"]["name"]
    spec = app["spec"]
    assert CRD_REQUIRED <= set(spec), CRD_REQUIRED - set(spec)
    for key, value in spec.items():
        assert key in CRD_FIELDS, f"field {key} not checked against the CRD"
        typ, enum = CRD_FIELDS[key]
        assert isinstance(value, typ), (key, value)
        assert enum is None or value in enum, (key, value)
    assert spec["restartPolicy"]["type"] in {"Never", "Always", "OnFailure"}
    for role in ("driver", "executor"):
        for key, value in spec[role].items():
            assert key in CRD_POD_FIELDS, f"{role}.{key} not checked against the CRD"
            assert isinstance(value, CRD_POD_FIELDS[key]), (role, key, value)
        assert spec[role]["cores"] >= 1
        # the nested Kubernetes types, through the core schemas: pod securityContext,
        # container securityContext, mounts and env of a real Pod
        validate_core({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
                       "spec": {"securityContext": spec[role]["podSecurityContext"],
                                "volumes": spec["volumes"],
                                "containers": [{"name": "c", "image": spec["image"],
                                                "securityContext": spec[role]["securityContext"],
                                                "volumeMounts": spec[role]["volumeMounts"],
                                                "env": spec[role]["env"]}]}})
    assert spec["executor"]["instances"] >= 1


def all_objects(cfg: PipelineConfig) -> list[dict]:
    return [o for objs in examples(cfg).values() for o in objs]


def pods_of(obj: dict) -> list[dict]:
    """(pod securityContext, containers) holders in an object."""
    if obj["kind"] == "Job":
        return [obj["spec"]["template"]["spec"]]
    return []


# ------------------------------------------------------------------ the renderer


def cpu_config() -> PipelineConfig:
    return PipelineConfig(data_root=Path("/mnt/mind"), execution="kubernetes", image=IMAGE,
                          train_nodes=3, train_nproc=4, train_max_restarts=5,
                          index_args=("--recall-threshold", "0.9"))


@pytest.mark.parametrize("cfg", [example_config(), cpu_config()], ids=["gpu", "cpu"])
def test_every_object_is_valid(cfg):
    objs = all_objects(cfg)
    assert {o["kind"] for o in objs} == {"ServiceAccount", "Role", "RoleBinding", "Service",
                                         "PersistentVolumeClaim", "Job", "SparkApplication"}
    for o in objs:
        if o["kind"] == "SparkApplication":
            check_spark_application(o)
        else:
            validate_core(o)


def test_the_validator_rejects_a_wrong_object():
    """The schema check is live: a string uid and an unknown field both fail."""
    job = copy.deepcopy(examples(example_config())["train.yaml"][0])
    job["spec"]["template"]["spec"]["securityContext"]["runAsUser"] = "1000"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_core(job)
    job = copy.deepcopy(examples(example_config())["setup.yaml"][-1])
    job["spec"]["clusterIp"] = "None"  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_core(job)
    app = copy.deepcopy(examples(example_config())["spark-embed-users.yaml"][0])
    del app["spec"]["sparkVersion"]
    with pytest.raises(AssertionError):
        check_spark_application(app)


def test_infra_k8s_examples_are_the_renderers_output():
    written = {p.name: p.read_text() for p in (REPO_ROOT / "infra" / "k8s").glob("*.yaml")}
    rendered = {name: dump(objs) for name, objs in examples(example_config()).items()}
    assert written == rendered, ("infra/k8s/ differs from orchestration/k8s.py: run "
                                 "`python -m orchestration.k8s --write infra/k8s`")


def test_every_pod_runs_as_a_numeric_non_root_user_with_fs_group():
    for o in all_objects(example_config()):
        holders = pods_of(o)
        if o["kind"] == "SparkApplication":
            holders = [{"securityContext": o["spec"][r]["podSecurityContext"],
                        "containers": [o["spec"][r]]} for r in ("driver", "executor")]
        for pod in holders:
            sc = pod["securityContext"]
            assert sc["runAsUser"] == UID and sc["runAsNonRoot"] and sc["fsGroup"] == UID
            for c in pod["containers"]:
                assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_storage_class_is_configurable_and_identity_is_minimal():
    setup = {(o["kind"], o["metadata"]["name"]): o for o in setup_objects(example_config())}
    pvc = setup[("PersistentVolumeClaim", PVC)]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["storageClassName"] == "nfs-rwx"
    default = {o["kind"]: o for o in setup_objects(cpu_config())}["PersistentVolumeClaim"]
    assert "storageClassName" not in default["spec"]  # the cluster's default class
    # the spark driver may manage its executor pods; nothing cluster-wide
    role = setup[("Role", SPARK_SA)]
    assert {"pods", "services", "configmaps"} <= set(role["rules"][0]["resources"])
    binding = setup[("RoleBinding", SPARK_SA)]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": SPARK_SA,
                                    "namespace": "mind"}]
    assert setup[("ServiceAccount", "mind-runner")]["automountServiceAccountToken"] is False
    # the Airflow workers may drive exactly what the kubernetes mode submits
    airflow = setup[("Role", "mind-airflow")]["rules"]
    granted = {(g, r) for rule in airflow for g in rule["apiGroups"] for r in rule["resources"]
               if "create" in rule["verbs"] or r.startswith("pods")}
    assert {("sparkoperator.k8s.io", "sparkapplications"), ("batch", "jobs"),
            ("", "pods"), ("", "pods/log")} <= granted
    assert setup[("RoleBinding", "mind-airflow")]["subjects"][0]["name"] == "airflow-worker"


def test_spark_applications_run_this_repositorys_jobs_with_the_image():
    cfg = example_config()
    for job in ("build_sequences", "embed_users"):
        app = spark_application(cfg, job, DS, ["--ds", DS])
        main = app["spec"]["mainApplicationFile"]
        assert main == f"local://{IMAGE_ROOT}/jobs/{job}.py"
        assert (REPO_ROOT / "jobs" / f"{job}.py").is_file()
        assert app["spec"]["image"] == cfg.image and ":latest" not in cfg.image
        assert app["spec"]["driver"]["serviceAccount"] == SPARK_SA
        assert app["spec"]["sparkVersion"] == importlib.metadata.version("pyspark")


def test_names_are_unique_per_ds_and_fit_dns_labels():
    cfg = example_config()
    names = {}
    for ds in ("2026-11-28", "2026-11-29"):
        objs = [spark_application(cfg, "build_sequences", ds, []),
                spark_application(cfg, "embed_users", ds, []),
                training_job(cfg, ds, "0123456789ab", "s", "w", "", []),
                *(index_job(cfg, ds, stage) for stage in INDEX_STAGES)]
        names[ds] = {o["metadata"]["name"] for o in objs}
        assert len(names[ds]) == 6
        for n in names[ds]:
            # the operators prepend "job-" and append "-xxxxxxxx"; pods add "-<index>"
            assert DNS_LABEL.match(n) and len("job-" + n + "-abcdefgh-0") <= 63, n
    assert not names["2026-11-28"] & names["2026-11-29"]


def test_training_job_is_elastic_torchrun_on_the_headless_service(tmp_path):
    """Indexed Job + c10d rendezvous on pod 0 (named through the headless Service) +
    recovery by pod replacement, writing into the run folder the publish gate reads."""
    root = tmp_path / "data"
    seq = root / "sequences" / f"ds={DS}"
    seq.mkdir(parents=True)
    (seq / "stats.json").write_text(json.dumps({"users": 10, "config": {}}))
    cfg = PipelineConfig(data_root=root, execution="kubernetes", image=IMAGE, train_nodes=3,
                         train_gpus=4)
    plan = plan_training(cfg, DS)
    job = training_job(cfg, DS, plan["fingerprint"], plan["seq_dir"], plan["work_dir"], "",
                       train_flags(cfg))
    validate_core(job)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 3
    assert "--nnodes=3" in args and "--nproc-per-node=4" in args
    assert "--rdzv-backend=c10d" in args and "--max-restarts=0" in args
    assert spec["backoffLimit"] == 3 * 3  # three replacements of all the pods
    assert f"--rdzv-endpoint=$(JOB_NAME)-0.{TRAIN_SERVICE}:{RDZV_PORT}" in args
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['batch.kubernetes.io/job-name']"
    assert not any(a.startswith(("--master_addr", "--node_rank", "--standalone")) for a in args)
    svc = {o["kind"]: o for o in setup_objects(cfg)}["Service"]
    assert pod["subdomain"] == svc["metadata"]["name"] == TRAIN_SERVICE
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    # where the gate reads: training/ds=D/run-<fp>/best.pt
    out = args[args.index("--out-dir") + 1]
    assert out == plan["work_dir"] == str(root / "training" / f"ds={DS}" /
                                          f"run-{plan['fingerprint']}")
    assert args[args.index("--data-dir") + 1] == str(seq)
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert args[args.index("-m") + 1] == "mind_model.train"
    assert importlib.util.find_spec("mind_model.train") is not None


def index_containers(jobs: list[dict]) -> dict[str, dict]:
    """stage -> the container of that stage's Job (by its pods' stage label)."""
    return {job["spec"]["template"]["metadata"]["labels"][INDEX_STAGE_LABEL]:
            job["spec"]["template"]["spec"]["containers"][0] for job in jobs}


def test_index_build_is_plan_then_an_indexed_fill_then_finish():
    cfg = example_config()  # 4 shards, GPUs
    jobs = examples(cfg)["build-index.yaml"]
    assert [j["metadata"]["labels"][INDEX_STAGE_LABEL] for j in jobs] == ["plan", "fill", "finish"]
    assert list(index_containers(jobs)) == ["plan", "fill", "finish"]  # the pods say it too
    spec = {j["metadata"]["labels"][INDEX_STAGE_LABEL]: j["spec"] for j in jobs}
    assert spec["fill"]["completionMode"] == "Indexed"
    assert spec["fill"]["completions"] == spec["fill"]["parallelism"] == cfg.index_shards == 4
    for stage in ("plan", "finish"):
        assert "completionMode" not in spec[stage] and spec[stage]["completions"] == 1
    c = index_containers(jobs)
    for stage, container in c.items():
        args = container["args"]
        assert args[:2] == ["-m", "jobs.build_index"]
        assert args[args.index("--stage") + 1] == stage and args[args.index("--ds") + 1] == DS
        assert "--shard" not in args  # fill: the shard is the pod's JOB_COMPLETION_INDEX
        assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert c["plan"]["args"][-2:] == ["--shards", "4"]  # the build's settings go to plan
    for stage in ("plan", "finish"):
        assert c[stage]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert "limits" not in c["fill"]["resources"]  # a shard needs CPUs only
    assert c["fill"]["resources"]["requests"]["cpu"] == "2"
    assert {"name": "OMP_NUM_THREADS", "value": "2"} in c["fill"]["env"]


def test_index_workers_set_the_fill_jobs_parallelism():
    cfg = PipelineConfig(data_root=Path("/mnt/mind"), execution="kubernetes", image=IMAGE,
                         index_shards=6, index_workers=2, index_args=("--recall-threshold", "0.9"))
    fill = index_job(cfg, DS, "fill")
    validate_core(fill)
    assert (fill["spec"]["completions"], fill["spec"]["parallelism"]) == (6, 2)
    plan = index_job(cfg, DS, "plan")["spec"]["template"]["spec"]["containers"][0]
    assert plan["args"][-4:] == ["--shards", "6", "--recall-threshold", "0.9"]
    assert "resources" in plan and "limits" not in plan["resources"]  # no GPUs configured
    assert load_config({}).index_workers == load_config({}).index_shards == 2
    assert load_config({"MIND_INDEX_SHARDS": "8"}).index_workers == 8
    assert load_config({"MIND_INDEX_WORKERS": "3"}).index_workers == 3
    with pytest.raises(ValueError, match="MIND_INDEX_WORKERS must be >= 1"):
        load_config({"MIND_INDEX_WORKERS": "0"})


def test_the_index_pods_commands_build_and_publish_the_index(tmp_path, monkeypatch):
    """The three Jobs' commands, run in order on real embeddings (each fill pod with the
    JOB_COMPLETION_INDEX Kubernetes gives it), publish the index the one-process build would."""
    from jobs.build_index import main
    from tests.test_index_build import STAGED, write_embeddings

    root = write_embeddings(tmp_path / "data")
    cfg = PipelineConfig(data_root=root, execution="kubernetes", image=IMAGE, index_shards=3,
                         index_args=tuple(STAGED[4:]))  # the gate's flags, not --ds --shards
    jobs = [index_job(cfg, DS, stage) for stage in INDEX_STAGES]
    for job in jobs:
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        for pod in range(job["spec"]["completions"]):
            if job["spec"].get("completionMode") == "Indexed":
                monkeypatch.setenv("JOB_COMPLETION_INDEX", str(pod))
            assert main(args[2:]) == 0, (job["metadata"]["name"], pod)
        monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    manifest = json.loads((root / "index" / f"ds={DS}" / "manifest.json").read_text())
    assert manifest["n_shards"] == 3 and manifest["factory"] == "IVF16,Flat"
    assert sorted(p.name for p in (root / "index").iterdir()) == [f"ds={DS}"]


def test_kubernetes_mode_needs_a_pinned_image():
    env = {"MIND_EXECUTION": "kubernetes"}
    with pytest.raises(ValueError, match="MIND_IMAGE is required"):
        load_config(env)
    for bad in ("mind-pipeline:0.1.0", "registry.example.com/mind-pipeline:latest",
                "registry.example.com/mind-pipeline"):
        with pytest.raises(ValueError, match="MIND_IMAGE"):
            load_config({**env, "MIND_IMAGE": bad})
    with pytest.raises(ValueError, match="MIND_EXECUTION"):
        load_config({"MIND_EXECUTION": "k8s"})
    assert load_config({**env, "MIND_IMAGE": IMAGE}).image == IMAGE


def test_setup_cli_prints_valid_objects_or_one_line_error():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MIND_EXECUTION": "kubernetes",
           "MIND_IMAGE": IMAGE, "MIND_K8S_STORAGE_CLASS": "efs-rwx", "MIND_DATA_ROOT": "/data"}
    r = subprocess.run([sys.executable, "-m", "orchestration.k8s", "--setup"], env=env,
                       capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    objs = list(yaml.safe_load_all(r.stdout))
    for o in objs:
        validate_core(o)
    assert {o["kind"]: o for o in objs}["PersistentVolumeClaim"]["spec"][
        "storageClassName"] == "efs-rwx"
    env["MIND_IMAGE"] = "mind:latest"
    r = subprocess.run([sys.executable, "-m", "orchestration.k8s", "--setup"], env=env,
                       capture_output=True, text=True, cwd=REPO_ROOT)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "MIND_IMAGE" in r.stderr


# ------------------------------------------------------------------ the DAG in kubernetes mode


@pytest.fixture(scope="module")
def submitted(tmp_path_factory):
    """What the daily DAG's operators build for ds in kubernetes mode (a subprocess: the DAG
    files read MIND_* at import)."""
    work = tmp_path_factory.mktemp("k8s-dag")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "AIRFLOW_HOME": str(work / "airflow"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "false", "MIND_EXECUTION": "kubernetes",
           "MIND_IMAGE": IMAGE, "MIND_GPU_IMAGE": IMAGE.replace("pipeline", "pipeline-gpu"),
           "MIND_DATA_ROOT": "/data", "MIND_TRAIN_NODES": "2", "MIND_TRAIN_GPUS": "2",
           "MIND_TRAIN_ARGS": "--batch-size 512", "MIND_INDEX_SHARDS": "3",
           "MIND_INDEX_WORKERS": "2"}
    plan = {"seq_dir": f"/data/sequences/ds={DS}", "fingerprint": "fedcba987654",
            "work_dir": f"/data/training/ds={DS}/run-fedcba987654",
            "warm_start": "/data/models/ds=2026-11-27/model.pt"}
    xcoms = {"resolve_ds": DS, "plan_train": plan}
    r = subprocess.run([sys.executable, "-m", "tests.render_k8s_dag", json.dumps(xcoms),
                        str(REPO_ROOT / "dags")], env=env, capture_output=True, text=True,
                       cwd=REPO_ROOT, timeout=300)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RENDERED ")]
    assert r.returncode == 0 and line, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(line[0].removeprefix("RENDERED ")), plan


def test_kubernetes_mode_task_types_and_order(submitted):
    out, _ = submitted
    assert out["tasks"] == {
        "resolve_ds": "_PythonDecoratedOperator", "build_sequences": "SparkKubernetesOperator",
        "plan_train": "_PythonDecoratedOperator", "train": "KubernetesJobOperator",
        "evaluate_gate": "_PythonDecoratedOperator", "embed_users": "SparkKubernetesOperator",
        "build_index_plan": "KubernetesJobOperator", "build_index_fill": "KubernetesJobOperator",
        "build_index_finish": "KubernetesJobOperator", "publish": "_PythonDecoratedOperator"}
    order = ["resolve_ds", "build_sequences", "plan_train", "train", "evaluate_gate",
             "embed_users", "build_index_plan", "build_index_fill", "build_index_finish",
             "publish"]
    for up, down in zip(order, order[1:]):
        assert down in out["downstream"][up], f"{up} -> {down}"


def test_kubernetes_mode_submits_valid_objects_for_the_ds(submitted):
    out, plan = submitted
    for task in ("build_sequences", "embed_users"):
        app = out[task]
        check_spark_application(app)
        args = app["spec"]["arguments"]
        assert args[args.index("--ds") + 1] == DS and args[args.index("--data-root") + 1] == "/data"
        assert app["metadata"]["name"].startswith(f"mind-{task.replace('_', '-')}-20261128-")
    index = [f"build_index_{stage}" for stage in INDEX_STAGES]
    for task in ("train", *index):
        validate_core(out[task])  # the Job exactly as the operator would create it
    train = out["train"]
    assert train["spec"]["completionMode"] == "Indexed" and train["spec"]["parallelism"] == 2
    c = train["spec"]["template"]["spec"]["containers"][0]
    args = c["args"]
    assert args[args.index("--out-dir") + 1] == plan["work_dir"]
    assert args[args.index("--warm-start-from") + 1] == plan["warm_start"]
    assert args[args.index("--batch-size") + 1] == "512"
    assert c["image"].endswith("mind-pipeline-gpu:0.1.0")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert train["spec"]["template"]["spec"]["subdomain"] == TRAIN_SERVICE
    assert train["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == UID
    assert train["spec"]["template"]["metadata"]["labels"]["mind/ds"] == "20261128"
    c = index_containers([out[task] for task in index])
    assert list(c) == list(INDEX_STAGES)  # each task runs its own stage
    for stage, container in c.items():
        args = container["args"]
        assert args[args.index("--ds") + 1] == DS and args[args.index("--stage") + 1] == stage
        assert "--shard" not in args
    assert c["plan"]["args"][c["plan"]["args"].index("--shards") + 1] == "3"
    fill = out["build_index_fill"]["spec"]
    assert fill["completionMode"] == "Indexed"
    assert (fill["completions"], fill["parallelism"]) == (3, 2)
    assert "limits" not in c["fill"]["resources"] and c["finish"]["resources"]["limits"]
