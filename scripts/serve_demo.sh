#!/usr/bin/env bash
# The end of `make demo`: serve the registered fashion model behind a bearer token and start
# the Streamlit app talking to it. Ctrl-C stops both. A token is generated on first use and
# kept in .simrec-token (mode 600) unless SIMREC_API_TOKEN is set.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${SIMREC_VENV:-.venv}/bin
PORT=${SIMREC_PORT:-8080}
if [ -z "${SIMREC_API_TOKEN:-}" ]; then
  if [ ! -s .simrec-token ]; then
    (umask 077; "$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(32))' > .simrec-token)
  fi
  SIMREC_API_TOKEN=$(cat .simrec-token)
fi
export SIMREC_API_TOKEN SIMREC_API_URL="http://127.0.0.1:$PORT"

"$BIN/simrec" serve --model-uri models:/simrec-fashion@champion --host 127.0.0.1 --port "$PORT" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 1 120); do
  curl -fsS "$SIMREC_API_URL/ping" >/dev/null 2>&1 && break
  kill -0 $SERVER 2>/dev/null || { echo "serve_demo.sh: the model server exited" >&2; exit 1; }
  sleep 1
done
echo "Model server: $SIMREC_API_URL (token in .simrec-token; try: .venv/bin/simrec query --url $SIMREC_API_URL --token-file .simrec-token IMAGE)"
echo "Demo app:     http://127.0.0.1:8501  (Ctrl-C stops both)"
"$BIN/simrec" app
