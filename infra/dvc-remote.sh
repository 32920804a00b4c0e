#!/usr/bin/env bash
# Point this DVC repository at an S3 remote (MinIO, AWS, moto) and make it the default.
#
#   PIXART_DVC_REMOTE=s3://dvc/pixart-curriculum PIXART_S3_ENDPOINT_URL=http://minio:9000 \
#   AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... infra/dvc-remote.sh
#
# The URL and endpoint go to .dvc/config (committed: every clone finds the remote). Credentials go to
# .dvc/config.local only (git-ignored by DVC), and only when they are in the environment; without
# them DVC asks boto3, which reads AWS_* variables, ~/.aws or an instance role at push/pull time.
# Without PIXART_S3_ENDPOINT_URL no endpoint is committed and each client names its own in
# AWS_ENDPOINT_URL_S3 (the compose stack's worker reaches MinIO as http://minio:9000, the host as
# http://127.0.0.1:9000).
# Run it in the repository root. Re-running replaces the remote.
set -euo pipefail

remote_name="${PIXART_DVC_REMOTE_NAME:-s3}"
url="${PIXART_DVC_REMOTE:?set PIXART_DVC_REMOTE to s3://BUCKET/PATH}"
dvc="${DVC:-dvc}"

"$dvc" remote add --force --default "$remote_name" "$url"
if [ -n "${PIXART_S3_ENDPOINT_URL:-}" ]; then
  "$dvc" remote modify "$remote_name" endpointurl "$PIXART_S3_ENDPOINT_URL"
fi
if [ -n "${AWS_ACCESS_KEY_ID:-}" ] && [ -n "${AWS_SECRET_ACCESS_KEY:-}" ]; then
  "$dvc" remote modify --local "$remote_name" access_key_id "$AWS_ACCESS_KEY_ID"
  "$dvc" remote modify --local "$remote_name" secret_access_key "$AWS_SECRET_ACCESS_KEY"
fi
echo "dvc remote '$remote_name' -> $url${PIXART_S3_ENDPOINT_URL:+ (endpoint $PIXART_S3_ENDPOINT_URL)}"
