#!/usr/bin/env bash
# `make run`: the quota service on 127.0.0.1:8081 (memory store, or Redis with
# REDIS_URL=redis://host:port/db) and Envoy with envoy.yaml on 127.0.0.1:10000.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

envoy=$(scripts/envoy-bin.sh)
cargo build -q -p tollgate-quota -p tollgate-testkit --bin tollgate-quota --bin tollgate-standin
store=${REDIS_URL:-memory}
admin=${TOLLGATE_QUOTA_ADMIN_TOKEN:-demo-admin-token}
# The filter sends envoy.yaml's quota_service.token; keys can be made for its tiers only.
service=tollgate-dev-service-token
tiers=free,premium,basic,pro,enterprise

target/debug/tollgate-quota --listen 127.0.0.1:8081 --store "$store" --admin-token "$admin" \
  --service-token "$service" --tiers "$tiers" &
quota=$!
# The stand-in AI upstream behind /v1/chat/completions (envoy.yaml, cluster ai_upstream).
target/debug/tollgate-standin 8082 &
upstream=$!
trap 'kill "$quota" "$upstream" 2>/dev/null || true' EXIT INT TERM

cat <<EOT
tollgate: Envoy on http://127.0.0.1:10000 (admin :9901), quota service on :8081 (store: $store)
Try, in another terminal:
  curl -si -X POST localhost:10000/v1/images/generations                     # free tier, by client IP
  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w "%{http_code}\n" -X POST localhost:10000/v1/images/generations; done  # 6th: 429
  curl -si -X POST localhost:10000/v1/images/generations -H 'Authorization: Bearer tg_demo_premium_0123456789'
  curl -s -X POST localhost:8081/v1/keys -H 'Authorization: Bearer $admin' -d '{"tier":"premium","name":"me"}'   # a new key
  curl -s localhost:9901/stats/prometheus | grep tollgate
  curl -s localhost:8081/metrics
EOT
"$envoy" -c envoy.yaml --concurrency 2 --log-level info
