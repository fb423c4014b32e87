#!/usr/bin/env bash
# Checks the operations kit with the real tools. Exits non-zero if any check failed.
#
#   deploy/check.sh                  rules (promtool check rules), rule unit tests (promtool test
#                                    rules), the Prometheus config and the pod scrape job, YAML
#                                    and JSON syntax
#   deploy/check.sh metrics URL      a running service's /metrics: promtool check metrics, and
#                                    every exposed series in deploy/metrics-catalogue.txt
#
# Needs promtool (Debian: prometheus), python3 with PyYAML (Debian: python3-yaml) and, for the
# metrics mode, curl.
set -uo pipefail
cd "$(dirname "$0")/.."

failed=()
check() {
  local name=$1
  shift
  echo "--- $name"
  if "$@"; then
    echo "--- $name: ok"
  else
    echo "--- $name: FAILED"
    failed+=("$name")
  fi
}

finish() {
  if ((${#failed[@]})); then
    echo "deploy/check.sh failed: ${failed[*]}"
    exit 1
  fi
  echo "deploy/check.sh: all checks passed"
}

# The sample names of an exposition (stdin) that the catalogue does not list. A histogram listed
# by its base name covers its _bucket, _sum and _count series.
uncatalogued() {
  awk '
    NR == FNR {
      if ($0 ~ /^[a-z_]/ && $1 != "target-labels") {
        known[$1] = 1
        if ($2 == "histogram") { known[$1 "_bucket"] = 1; known[$1 "_sum"] = 1; known[$1 "_count"] = 1 }
      }
      next
    }
    /^[a-zA-Z_:]/ {
      name = $0
      sub(/[{ ].*/, "", name)
      if (!(name in known) && !(name in seen)) { seen[name] = 1; print name }
    }
  ' deploy/metrics-catalogue.txt -
}

check_exposition() {
  local url=$1 body
  if ! body=$(curl -sSf --max-time 10 "$url"); then
    echo "could not fetch $url"
    return 1
  fi
  local ok=0
  echo "promtool check metrics:"
  printf '%s\n' "$body" | promtool check metrics || ok=1
  local unknown
  unknown=$(printf '%s\n' "$body" | uncatalogued)
  if [[ -n $unknown ]]; then
    echo "series exposed by $url but missing from deploy/metrics-catalogue.txt:"
    printf '  %s\n' $unknown
    ok=1
  fi
  return $ok
}

yaml_syntax() {
  python3 - "$@" <<'PY'
import sys
import yaml

ok = True
for path in sys.argv[1:]:
    try:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        print(f"{path}: {len(docs)} document(s)")
    except (OSError, yaml.YAMLError) as e:
        print(f"{path}: {e}")
        ok = False
sys.exit(0 if ok else 1)
PY
}

json_syntax() {
  local path ok=0
  for path in "$@"; do
    if python3 -m json.tool "$path" >/dev/null; then
      echo "$path: valid JSON"
    else
      ok=1
    fi
  done
  return $ok
}

# The pod scrape job is a fragment of scrape_configs: checked inside a config of its own, its
# relabelling with it. Debian's promtool is built without Kubernetes discovery, so a static
# target stands in for the pods.
pod_scrape_job() {
  local config ok=0
  config=$(mktemp --suffix=.yml) || return 1
  {
    echo "scrape_configs:"
    sed -e 's/^  kubernetes_sd_configs:$/  static_configs:/' \
      -e "s/^    - role: pod$/    - targets: ['127.0.0.1:8000']/" \
      -e 's/^/  /' deploy/kubernetes/prometheus-scrape-annotations.yaml
  } >"$config"
  promtool check config "$config" || ok=1
  rm -f "$config"
  return $ok
}

if [[ ${1:-} == metrics ]]; then
  if [[ -z ${2:-} ]]; then
    echo "usage: deploy/check.sh metrics URL (for example http://127.0.0.1:8000/metrics)"
    exit 2
  fi
  check "promtool check metrics" check_exposition "$2"
  finish
  exit 0
fi

check "promtool check rules" promtool check rules deploy/prometheus/*.yml
check "promtool test rules" promtool test rules deploy/prometheus/tests/*.yml
check "promtool check config" promtool check config deploy/prometheus/config/prometheus.yml
check "promtool check config (pod scrape job)" pod_scrape_job
check "YAML syntax" yaml_syntax deploy/kubernetes/*.yaml deploy/grafana/provisioning/*.yml
check "JSON syntax" json_syntax deploy/grafana/*.json
finish
