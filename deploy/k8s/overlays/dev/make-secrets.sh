#!/usr/bin/env bash
# The Secrets the dev overlay reads, with random passwords: nothing secret is committed.
# Run once before `kubectl apply -k deploy/k8s/overlays/dev` (again with --force to replace).
set -euo pipefail
namespace=polyservice
force="${1:-}"
random() { python3 -c 'import secrets; print(secrets.token_urlsafe(24))'; }

kubectl get namespace "$namespace" >/dev/null 2>&1 || kubectl create namespace "$namespace"
if kubectl -n "$namespace" get secret postgres-admin >/dev/null 2>&1 && [ "$force" != --force ]; then
  echo "the Secrets exist; pass --force to replace them (the databases keep their old passwords)" >&2
  exit 1
fi
db_password="$(random)"
bus_password="$(random)"
apply() { kubectl -n "$namespace" create secret generic "$@" --dry-run=client -o yaml | kubectl apply -f -; }
apply postgres-admin --from-literal=password="$db_password"
apply rabbitmq-admin --from-literal=username=poly --from-literal=password="$bus_password"
for service in auth users orders payments notifications; do
  apply "$service-database" --from-literal=url="postgresql://poly:$db_password@postgres:5432/$service"
done
apply poly-bus --from-literal=url="amqp://poly:$bus_password@rabbitmq:5672/"
apply auth-key-encryption --from-literal=key="$(python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode())')"
echo "Secrets written to namespace $namespace"
