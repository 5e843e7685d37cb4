#!/usr/bin/env bash
# Runs every benchmark of the foundation in one go and prints the figures
# for docs/benchmarks.md. Peers (nginx, the direct backend path) run in the
# same run on the same machine, so ratios are what to read.
#
#   bench/run.sh            # all
#   bench/run.sh latency    # one of: latency memory healthz batch batch-memory repl rlm
#                           #         memory-tiers
set -euo pipefail
cd "$(dirname "$0")/.."

KOWALSKI_BENCH=1 scripts/setup.sh
scripts/build.sh kowalski scripted-llm chat_bench batch_bench repl_bench rlm_bench memory_bench

which="${1:-all}"
work=$(mktemp -d /tmp/kowalski-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Starts a program in the background and waits until its stdout shows `pattern`.
start() {
  local name=$1 pattern=$2; shift 2
  "$@" >"$work/$name.out" 2>"$work/$name.err" &
  pids+=($!)
  for _ in $(seq 1 200); do
    if grep -q "$pattern" "$work/$name.out"; then
      return 0
    fi
    read -rt 0.05 <> <(:) || true
  done
  echo "bench: $name did not start: $(cat "$work/$name.err")" >&2
  exit 1
}

start backend "listening port=" build/tests/scripted-llm --threads 1
backend_port=$(grep -o 'port=[0-9]*' "$work/backend.out" | cut -d= -f2)
backend="http://127.0.0.1:$backend_port"

node_flags=(--port 0 --provider ollama --llm.ollama_url "$backend" --model test-model
            --log-level warn --http.threads 2)

if [[ $which == all || $which == latency ]]; then
  start node1 "listening on" build/kowalski serve "${node_flags[@]}" --data-dir "$work/data1"
  node=$(grep -o 'http://[0-9.:]*' "$work/node1.out")
  echo "== chat turn latency: through the node (gateway, actors, durable commit) vs direct"
  build/bench/chat_bench latency --node "$node" --backend "$backend" --turns 3000
fi

if [[ $which == all || $which == memory ]]; then
  start node2 "listening on" build/kowalski serve "${node_flags[@]}" --data-dir "$work/data2" \
    --conversations.max_live 10000 --conversations.history_window 100
  node=$(grep -o 'http://[0-9.:]*' "$work/node2.out")
  node_pid=${pids[-1]}
  echo "== memory: 10,000 live conversations x 10 turns"
  build/bench/chat_bench memory --node "$node" --pid "$node_pid" --conversations 10000 \
    --turns 10 --concurrency 64
fi

if [[ $which == all || $which == healthz ]]; then
  start node3 "listening on" build/kowalski serve "${node_flags[@]}" --data-dir "$work/data3"
  node=$(grep -o 'http://[0-9.:]*' "$work/node3.out")

  # nginx with as many workers as the gateway has I/O threads, serving a
  # file with the same body as /healthz.
  mkdir -p "$work/nginx/html" "$work/nginx/logs"
  echo '{"status":"ok"}' >"$work/nginx/html/healthz"
  nginx_port=$((20000 + RANDOM % 20000))
  cat >"$work/nginx/nginx.conf" <<CONF
worker_processes 2;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$nginx_port;
    root $work/nginx/html;
    location / { default_type application/json; }
  }
}
CONF
  nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
  pids+=($!)
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$nginx_port") 2>/dev/null && break
    read -rt 0.05 <> <(:) || true
  done

  echo "== GET /healthz with wrk -t2 -c64 -d10s: node vs nginx static file"
  rps() { wrk -t2 -c64 -d10s "$1" | awk '/Requests\/sec/ {print $2}'; }
  # Alternate twice so that neither side always runs on a warmer machine.
  n1=$(rps "$node/healthz"); g1=$(rps "http://127.0.0.1:$nginx_port/healthz")
  g2=$(rps "http://127.0.0.1:$nginx_port/healthz"); n2=$(rps "$node/healthz")
  awk -v n1="$n1" -v n2="$n2" -v g1="$g1" -v g2="$g2" 'BEGIN {
    n = (n1 + n2) / 2; g = (g1 + g2) / 2;
    printf "healthz node_rps=%.0f nginx_rps=%.0f ratio=%.2f (runs: node %s %s, nginx %s %s)\n",
           n, g, n / g, n1, n2, g1, g2 }'
fi

# Batches: each node gets 64 workers, and as many idle connections.
batch_flags=(--llm.workers 64 --client.max_idle_per_host 64)

if [[ $which == all || $which == batch ]]; then
  start slow "listening port=" build/tests/scripted-llm --threads 2 --latency-ms 20
  slow_port=$(grep -o 'port=[0-9]*' "$work/slow.out" | cut -d= -f2)
  start node4 "listening on" build/kowalski serve --port 0 --provider ollama \
    --llm.ollama_url "http://127.0.0.1:$slow_port" --model test-model --log-level warn \
    --data-dir "$work/data4" "${batch_flags[@]}"
  node=$(grep -o 'http://[0-9.:]*' "$work/node4.out")
  echo "== batch: 10,000 prompts at concurrency 64, backend latency 20 ms" \
       "(ideal 10000 / 64 x 20 ms = 3.125 s)"
  for run in 1 2 3; do
    build/bench/batch_bench run --node "$node" --items 10000 \
      | awk '{ print } /wall_s=/ { split($4, w, "="); printf "  wall / ideal = %.3f\n", w[2] / 3.125 }'
  done

  start fast "listening port=" build/tests/scripted-llm --threads 2
  fast_port=$(grep -o 'port=[0-9]*' "$work/fast.out" | cut -d= -f2)
  fast="http://127.0.0.1:$fast_port"
  start node5 "listening on" build/kowalski serve --port 0 --provider ollama \
    --llm.ollama_url "$fast" --model test-model --log-level warn \
    --data-dir "$work/data5" "${batch_flags[@]}"
  node=$(grep -o 'http://[0-9.:]*' "$work/node5.out")
  echo "== batch: 10,000 prompts at concurrency 64, zero latency:" \
       "node (durable) vs Python aiohttp vs Node.js fetch, same backend"
  # Alternate so that no side always runs on a warmer machine.
  for run in 1 2; do
    build/bench/batch_bench run --node "$node" --items 10000
    /usr/bin/python3 bench/peers/aiohttp_batch.py "$fast" 10000 64
    node bench/peers/fetch_batch.mjs "$fast" 10000 64
  done
fi

if [[ $which == all || $which == batch-memory ]]; then
  start mem "listening port=" build/tests/scripted-llm --threads 2 --latency-ms 5
  mem_port=$(grep -o 'port=[0-9]*' "$work/mem.out" | cut -d= -f2)
  start node6 "listening on" build/kowalski serve --port 0 --provider ollama \
    --llm.ollama_url "http://127.0.0.1:$mem_port" --model test-model --log-level warn \
    --data-dir "$work/data6" "${batch_flags[@]}"
  node=$(grep -o 'http://[0-9.:]*' "$work/node6.out")
  echo "== batch memory: 100,000 queued prompts, then their results streamed to a file"
  build/bench/batch_bench memory --node "$node" --pid "${pids[-1]}" --items 100000 \
    --out "$work/results.jsonl"
fi

if [[ $which == all || $which == repl ]]; then
  echo "== repl: a trivial snippet on a warm Python worker vs python3 -c per snippet;" \
       "8 workers with and without bubblewrap"
  build/bench/repl_bench all 2>/dev/null
fi

if [[ $which == all || $which == rlm ]]; then
  echo "== rlm: engine time per turn (model excluded) vs one execution + one commit;" \
       "loading 100 MB vs python3 reading the file; llm_query_batched 200 x 50 ms at 16" \
       "vs ideal and sequential"
  build/bench/rlm_bench all
fi

if [[ $which == all || $which == memory-tiers ]]; then
  echo "== memory tiers: HNSW search over 100,000 x 384 vs exact; durable appends with" \
       "shared commits vs one at a time; start-up with a saved index vs a rebuild;" \
       "a remote embedder batched vs one text a request; episodic search of one" \
       "conversation vs the whole tier"
  build/bench/memory_bench all
fi
