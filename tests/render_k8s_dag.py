"""Print, as JSON, what the daily DAG submits in kubernetes mode for one ds (run in a
subprocess by tests/test_k8s.py: the DAG files read MIND_* when first imported).

For each task: its operator type; for the Kubernetes operators, the object the operator
itself builds after Airflow rendered its templates with the run's XComs (the Job of
KubernetesJobOperator.build_job_request_obj, the body of SparkKubernetesOperator's
launcher). Nothing is sent to a cluster.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

# The operators ask their hook whether they run in a cluster, which loads a kube-config;
# this one names an address that is never contacted (nothing is sent anywhere).
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: none, user: {token: none}}]
contexts: [{name: none, context: {cluster: none, user: none, namespace: mind}}]
current-context: none
"""


class RunXComs:
    """The `ti` of a template context: xcom_pull answers what upstream tasks returned."""

    def __init__(self, values: dict):
        self.values = values

    def xcom_pull(self, task_ids: str, **_):
        return self.values[task_ids]


def main() -> None:
    cfg_file = os.path.join(tempfile.mkdtemp(), "kubeconfig")
    with open(cfg_file, "w") as f:
        f.write(KUBECONFIG)
    os.environ["KUBECONFIG"] = cfg_file
    from airflow.dag_processing.dagbag import DagBag
    from airflow.providers.cncf.kubernetes.operators.custom_object_launcher import (
        CustomObjectLauncher,
    )
    from kubernetes.client import ApiClient

    xcoms = json.loads(sys.argv[1])
    bag = DagBag(dag_folder=sys.argv[2])
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["mind_daily"]
    out = {"tasks": {}, "downstream": {}}
    for t in dag.tasks:
        out["tasks"][t.task_id] = type(t).__name__
        out["downstream"][t.task_id] = sorted(t.downstream_task_ids)
        name = type(t).__name__
        if name not in ("KubernetesJobOperator", "SparkKubernetesOperator"):
            continue
        t.render_template_fields({"ti": RunXComs(xcoms)})
        if name == "KubernetesJobOperator":
            job = t.build_job_request_obj(None)
            out[t.task_id] = ApiClient().sanitize_for_serialization(job)
        else:
            launcher = CustomObjectLauncher(name=t.create_job_name(), namespace=t.namespace,
                                            kube_client=None, custom_obj_api=None,
                                            template_body=t.template_body)
            out[t.task_id] = launcher.body
    print("RENDERED " + json.dumps(out))  # one line: Airflow logs to stdout too


if __name__ == "__main__":
    main()
