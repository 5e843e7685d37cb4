#!/usr/bin/env bash
# Sets up, builds and starts a kowalski node on embedded defaults: HTTP on
# 127.0.0.1:8080, data in ./data. Extra arguments go to `kowalski serve`.
#
# Backend: whatever is configured (KOWALSKI_LLM_PROVIDER, OLLAMA_HOST, flags).
# With nothing configured, Ollama on 127.0.0.1:11434 is used if it answers;
# otherwise the node replays the shipped demo transcript, and says so.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/build.sh kowalski

args=()
configured=0
if [[ -n "${KOWALSKI_LLM_PROVIDER:-}" || -n "${OLLAMA_HOST:-}" ]]; then
  configured=1
fi
for a in "$@"; do
  case "$a" in --provider*|--llm.provider*) configured=1 ;; esac
done
if [[ $configured -eq 0 ]] && ! (exec 3<>/dev/tcp/127.0.0.1/11434) 2>/dev/null; then
  echo "run: no LLM backend configured and none on 127.0.0.1:11434;" \
       "replaying config/demo-transcript.jsonl (model 'demo')" >&2
  args+=(--provider replay --model demo)
fi

exec build/kowalski serve "${args[@]}" "$@"
