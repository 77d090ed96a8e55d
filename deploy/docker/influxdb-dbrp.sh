#!/bin/bash
# InfluxDB 2 init script for the docker-compose stack, mounted into
# /docker-entrypoint-initdb.d/. The influxdb image runs it once, right after
# its first setup (DOCKER_INFLUXDB_INIT_MODE=setup), against a temporary
# server; INFLUX_HOST and the CLI config with the admin token are set for it.
#
# whosin writes to the bucket with the v2 write API; the Grafana dashboards
# query with InfluxQL, which needs a database/retention-policy (DBRP) mapping
# onto that bucket: database "senseops", retention policy "autogen", as the
# SenseOps dashboards (and WHOSIN_INFLUXDB_DB in docker-compose.yml) expect.
set -euo pipefail

org="${DOCKER_INFLUXDB_INIT_ORG}"
token="${DOCKER_INFLUXDB_INIT_ADMIN_TOKEN:-}"
bucket="${DOCKER_INFLUXDB_INIT_BUCKET:-senseops}"
db=senseops   # WHOSIN_INFLUXDB_DB of the grafana service

auth=()
if [ -n "${token}" ]; then
  auth=(--token "${token}")
fi

# The entrypoint exports the id of the bucket it created; look it up otherwise.
bucket_id="${DOCKER_INFLUXDB_INIT_BUCKET_ID:-}"
if [ -z "${bucket_id}" ]; then
  bucket_id="$(influx bucket list --org "${org}" "${auth[@]}" --name "${bucket}" --hide-headers | cut -f1)"
fi
if [ -z "${bucket_id}" ]; then
  echo "influxdb-dbrp.sh: bucket ${bucket} not found in org ${org}" >&2
  exit 1
fi

if influx v1 dbrp list --org "${org}" "${auth[@]}" --db "${db}" --hide-headers | grep -q .; then
  echo "influxdb-dbrp.sh: a DBRP mapping for database ${db} exists already"
  exit 0
fi

influx v1 dbrp create \
  --org "${org}" "${auth[@]}" \
  --bucket-id "${bucket_id}" \
  --db "${db}" \
  --rp autogen \
  --default
echo "influxdb-dbrp.sh: InfluxQL database ${db}, retention policy autogen -> bucket ${bucket} (${bucket_id})"
