#!/usr/bin/env python3
"""The official Python `kubernetes` client (PyPI) against a berth cluster.

Run by integration/tests/cluster_e2e.rs (python_client_*) with the admin
kubeconfig of a running cluster:

    client_test.py --kubeconfig FILE --node NODE [--namespace NS] [--image IMAGE]

Reads a node; creates a pod and waits for it to run; lists it; watches it
(from the list's resourceVersion, in a thread, until DELETED: ADDED, then
MODIFIED, then DELETED, nothing twice); patches it with a strategic merge
patch (a containers entry merged by name keeps the container's command);
deletes it and waits until it is gone. Prints "python client: OK" and exits
0, or prints what failed and exits 1. The TLS connection is verified against
the kubeconfig's CA (the client checks the server certificate's SANs).
"""

import argparse
import sys
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

POD_NAME = "py-client"


def fail(msg):
    print(f"python client: FAIL: {msg}", flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def wait(what, timeout, fn):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
        except ApiException as e:  # transient: keep the last one for the message
            last = f"{e.status} {e.reason}: {e.body}"
        time.sleep(0.25)
    fail(f"timed out after {timeout}s waiting for {what}" + (f" (last error {last})" if last else ""))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--node", required=True)
    ap.add_argument("--namespace", default="default")
    ap.add_argument("--image", default="localhost/berth/busybox:1.36")
    args = ap.parse_args()
    ns = args.namespace

    config.load_kube_config(config_file=args.kubeconfig)
    v1 = client.CoreV1Api()

    # Read a node.
    node = v1.read_node(args.node)
    check(node.metadata.name == args.node, f"read_node returned {node.metadata.name}")
    ready = [c for c in (node.status.conditions or []) if c.type == "Ready"]
    check(ready and ready[0].status == "True", f"node {args.node} Ready condition: {ready}")
    addresses = {a.type: a.address for a in (node.status.addresses or [])}
    check("InternalIP" in addresses, f"node addresses {addresses}")
    print(f"read node {args.node}: Ready, InternalIP {addresses['InternalIP']}", flush=True)

    # Watch from the list's resourceVersion, so nothing between is missed.
    start_rv = v1.list_namespaced_pod(ns).metadata.resource_version
    events = []
    watch_error = []

    def run_watch():
        w = watch.Watch()
        try:
            for ev in w.stream(
                v1.list_namespaced_pod,
                namespace=ns,
                field_selector=f"metadata.name={POD_NAME}",
                resource_version=start_rv,
                timeout_seconds=120,
            ):
                obj = ev["object"]
                events.append((ev["type"], obj.metadata.resource_version, obj.status.phase))
                if ev["type"] == "DELETED":
                    w.stop()
        except Exception as e:  # reported by the main thread
            watch_error.append(repr(e))

    watcher = threading.Thread(target=run_watch, daemon=True)
    watcher.start()

    command = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    body = client.V1Pod(
        metadata=client.V1ObjectMeta(name=POD_NAME, labels={"e2e": "python"}),
        spec=client.V1PodSpec(
            termination_grace_period_seconds=5,
            node_selector={"kubernetes.io/hostname": args.node},
            containers=[
                client.V1Container(
                    name="main",
                    image=args.image,
                    image_pull_policy="IfNotPresent",
                    command=command,
                )
            ],
        ),
    )
    created = v1.create_namespaced_pod(ns, body)
    check(created.metadata.uid, "created pod has no uid")
    print(f"created pod {POD_NAME} uid {created.metadata.uid}", flush=True)

    listed = v1.list_namespaced_pod(ns, label_selector="e2e=python")
    check([p.metadata.name for p in listed.items] == [POD_NAME],
          f"list by label: {[p.metadata.name for p in listed.items]}")

    running = wait("the pod to run", 60,
                   lambda: (lambda p: p if p.status.phase == "Running" and p.status.pod_ip else None)(
                       v1.read_namespaced_pod(POD_NAME, ns)))
    check(running.spec.node_name == args.node, f"scheduled to {running.spec.node_name}")
    print(f"running on {running.spec.node_name} with IP {running.status.pod_ip}", flush=True)

    # Strategic merge: the containers list merges by name, so the command stays
    # (a JSON merge patch would replace the list and lose it).
    patched = v1.patch_namespaced_pod(
        POD_NAME, ns,
        {"metadata": {"labels": {"patched": "yes"}},
         "spec": {"containers": [{"name": "main", "image": args.image}]}},
    )
    check(patched.metadata.labels.get("patched") == "yes" and patched.metadata.labels.get("e2e") == "python",
          f"labels after patch: {patched.metadata.labels}")
    check(patched.spec.containers[0].command == command,
          f"strategic merge lost the command: {patched.spec.containers[0].command}")
    print("patched (strategic merge)", flush=True)

    v1.delete_namespaced_pod(POD_NAME, ns)

    def gone():
        try:
            v1.read_namespaced_pod(POD_NAME, ns)
            return False
        except ApiException as e:
            if e.status == 404:
                return True
            raise

    wait("the pod to be gone", 60, gone)
    print("deleted", flush=True)

    watcher.join(timeout=15)
    check(not watcher.is_alive(), f"the watch did not end with DELETED: {events}")
    check(not watch_error, f"watch failed: {watch_error}")
    check(events, "the watch ended without any event (kube-apiserver takes watch=True, as this client "
                  "sends it, like watch=true: Go's strconv.ParseBool)")
    types = [t for t, _, _ in events]
    check(types[0] == "ADDED" and types[-1] == "DELETED" and set(types[1:-1]) <= {"MODIFIED"}
          and "MODIFIED" in types, f"watch events {types}")
    rvs = [int(rv) for _, rv, _ in events]
    check(all(a < b for a, b in zip(rvs, rvs[1:])), f"watch resourceVersions not increasing: {rvs}")
    check(any(t == "MODIFIED" and phase == "Running" for t, _, phase in events),
          f"the watch never saw the pod Running: {events}")
    print(f"watched {len(events)} events: {types}", flush=True)
    print("python client: OK", flush=True)


if __name__ == "__main__":
    main()
