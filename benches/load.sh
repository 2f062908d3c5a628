#!/usr/bin/env bash
# Side-by-side load benchmark: the gateway vs a plain nginx reverse proxy vs the simulated
# vLLM workers themselves ("direct"), all in one run on one machine. See benches/README.md.
#
#   bash benches/load.sh [--duration 10s] [--connections 64] [--runs 3] [--quick]
#                        [--parts compare,ceiling,streams] [--streams 10000] [--soak 10m]
#                        [--baseline OLD_BINARY]
#
# Everything it starts runs on loopback, on ports that were free a moment before, and is
# killed on exit (trap); every wait has a deadline.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bash benches/load.sh [options]

  --duration D          measured time per run (default 10s)
  --warmup D            load before measuring, not counted (default 2s)
  --connections N       closed-loop connections for the saturating scenarios (default 64)
  --paced-connections N connections for the paced (added-latency) scenario (default 16)
  --runs N              runs of every (target, scenario), interleaved; medians reported (default 3)
  --proxy-threads N     gateway [server] threads = nginx worker_processes (default 2 = cores)
  --loadgen-threads N   load generator threads (default 1)
  --parts LIST          any of compare,ceiling,streams,soak (default compare,ceiling,streams)
  --streams N           concurrent streams in the streams part (default 10000; capped to what
                        the gateway's fd limit allows, and the memory projected to N)
  --streams-force       run all N streams even past the fd limit (shows the EMFILE behaviour)
  --stream-seconds S    length of each of those streams, ~S tokens at 1 s apart (default 40)
  --soak D              add the soak part, D long (given alone: only the soak runs)
  --soak-connections N  connections during the soak (default 32)
  --gateway-extra FILE  TOML appended to the generated gateway config (starts with a [table])
  --model-keys TEXT     TOML lines added to every [[models]] table of the gateway, for
                        example 'stream_head = "first_event"'
  --baseline BIN        another build of the gateway (a copy of an older
                        target/release/vllm-gateway) run beside this one in the compare part,
                        same config, as a fourth target "baseline", interleaved with the rest:
                        the way to tell two builds apart on a noisy host
  --quick               short everything: 3s runs, 1 run, 1000 streams of 10 s
  --out DIR             where results go (default target/load/<date-time>)
  --keep-tmp            keep the temp dir (configs, logs) for inspection
EOF
}

DURATION=10s
WARMUP=2s
CONNECTIONS=64
PACED_CONNECTIONS=""
RUNS=3
PROXY_THREADS=2
LOADGEN_THREADS=1
PARTS=""
STREAMS=10000
STREAMS_FORCE=0
STREAM_SECONDS=40
SOAK=""
SOAK_CONNECTIONS=32
GATEWAY_EXTRA=""
MODEL_KEYS=""
QUICK=0
OUT=""
KEEP_TMP=0
BASELINE=""

while [[ $# -gt 0 ]]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --paced-connections) PACED_CONNECTIONS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --proxy-threads) PROXY_THREADS=$2; shift 2 ;;
    --loadgen-threads) LOADGEN_THREADS=$2; shift 2 ;;
    --parts) PARTS=$2; shift 2 ;;
    --streams) STREAMS=$2; shift 2 ;;
    --streams-force) STREAMS_FORCE=1; shift ;;
    --stream-seconds) STREAM_SECONDS=$2; shift 2 ;;
    --soak) SOAK=$2; shift 2 ;;
    --soak-connections) SOAK_CONNECTIONS=$2; shift 2 ;;
    --gateway-extra) GATEWAY_EXTRA=$2; shift 2 ;;
    --model-keys) MODEL_KEYS=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    --keep-tmp) KEEP_TMP=1; shift ;;
    --baseline) BASELINE=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "load.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done

if [[ $QUICK == 1 ]]; then
  DURATION=3s
  WARMUP=1s
  RUNS=1
  STREAMS=1000
  STREAM_SECONDS=10
fi
PACED_CONNECTIONS=${PACED_CONNECTIONS:-16}
# --soak D adds the soak part (alone, it is the only part).
if [[ -z $PARTS ]]; then
  if [[ -n $SOAK ]]; then PARTS=soak; else PARTS=compare,ceiling,streams; fi
elif [[ -n $SOAK && ,$PARTS, != *,soak,* ]]; then
  PARTS+=,soak
fi
if [[ ,$PARTS, == *,soak,* && -z $SOAK ]]; then SOAK=60s; fi
has_part() { [[ ,$PARTS, == *,$1,* ]]; }
if [[ -n $BASELINE ]]; then
  [[ -x $BASELINE && -f $BASELINE ]] || { echo "load.sh: --baseline $BASELINE is not an executable file" >&2; exit 2; }
  # Absolute: the script changes directory.
  BASELINE=$(cd "$(dirname "$BASELINE")" && pwd)/$(basename "$BASELINE")
  has_part compare || echo "load.sh: --baseline is only measured in the compare part" >&2
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-target/load/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RESULTS=$OUT/results.jsonl
: >"$RESULTS"

log() { printf '[load.sh %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Seconds in a humantime-ish duration (10s, 2m, 1h, 500ms -> 1).
secs() {
  local d=$1
  case "$d" in
    *ms) echo $(( (${d%ms} + 999) / 1000 )) ;;
    *s) echo "${d%s}" ;;
    *m) echo $(( ${d%m} * 60 )) ;;
    *h) echo $(( ${d%h} * 3600 )) ;;
    *) echo "$d" ;;
  esac
}

# ---------------------------------------------------------------------------------------------
# Processes: every one started is recorded and killed on exit.
PIDS=()
TMP=$(mktemp -d -t vllm-gateway-load.XXXXXX)

# stop_pids PID...: TERM, wait up to 5 s, KILL.
stop_pids() {
  local pid alive
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive=0
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [[ $alive == 0 ]] && return 0
    sleep 0.1
  done
  for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
}

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  stop_pids "${PIDS[@]}"
  if [[ $KEEP_TMP == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_bg LOG CMD...: runs CMD in the background, output to LOG; its pid in LAST_PID.
LAST_PID=
start_bg() {
  local logf=$1
  shift
  "$@" >>"$logf" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# wait_http URL PID LOG: until URL answers 200 (10 s), or die showing LOG if PID exits.
wait_http() {
  local url=$1 pid=$2 logf=$3 deadline=$((SECONDS + 10)) code
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$logf" >&2 || true
      die "process $pid exited before $url answered"
    fi
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
    [[ $code == 200 ]] && return 0
    sleep 0.1
  done
  tail -n 20 "$logf" >&2 || true
  die "$url did not answer 200 within 10 s (last: $code)"
}

# ---------------------------------------------------------------------------------------------
# Tools and builds
command -v curl >/dev/null || die "curl is needed"
if has_part compare && ! command -v nginx >/dev/null; then
  log "nginx is not installed: installing Debian's nginx with apt-get (needed as the baseline)"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; }; then
    die "could not install nginx; install it (apt-get install nginx) and rerun"
  fi
fi
NGINX=$(command -v nginx || true)
HAVE_WRK=0
if command -v wrk >/dev/null; then HAVE_WRK=1; fi

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)

log "building the release binary and the load generator"
cargo build --release --bin vllm-gateway 2>&1 | tail -n 1 >&2
LOADGEN=$(cargo bench --no-run --bench loadgen 2>&1 | sed -n 's/.*Executable .*(\(.*\))/\1/p' | tail -n 1)
[[ -x $LOADGEN ]] || die "could not find the loadgen bench executable"
BIN=$ROOT/target/release/vllm-gateway
if [[ -n $BASELINE && $BASELINE -ef $BIN ]]; then
  die "--baseline is this build's own binary (just rebuilt); pass a copy of the older build"
fi
"$LOADGEN" self-test >&2

API_KEY=sk-load-bench-0000000000000000
MODEL_FAST=bench-fast
MODEL_PACED=bench-paced
MODEL_SLOW=bench-slow

# ---------------------------------------------------------------------------------------------
# Simulated workers

# start_sim NAME PORT MODEL ARGS...: pid in LAST_PID
start_sim() {
  local name=$1 port=$2 model=$3
  shift 3
  start_bg "$TMP/$name.log" "$BIN" --log-format text simulate --listen "127.0.0.1:$port" \
    --model "$model" "$@"
  wait_http "http://127.0.0.1:$port/health" "$LAST_PID" "$TMP/$name.log"
}

# Fast workers (throughput): no simulated compute time, 16-token answers.
FAST_ARGS=(--ttft-ms 0 --itl-ms 0 --output-tokens 16 --max-num-seqs 4096 --threads 1)
# Paced workers (added latency) are `loadgen upstream`: 5 ms to the first token, 2 ms between
# 16 tokens, every event stamped with its send time. The simulator's tokio timer jitters by a
# millisecond on this box, which hides a proxy's added 100 µs; stamps measure it per event.
PACED_ARGS=(--ttft 5ms --itl 2ms --tokens 16)

# start_stamped NAME PORT MODEL: pid in LAST_PID
start_stamped() {
  local name=$1 port=$2 model=$3
  start_bg "$TMP/$name.log" "$LOADGEN" upstream --listen "127.0.0.1:$port" --model "$model" "${PACED_ARGS[@]}"
  wait_http "http://127.0.0.1:$port/health" "$LAST_PID" "$TMP/$name.log"
}

# ---------------------------------------------------------------------------------------------
# The gateway

# gateway_config FILE PORT ADMIN_PORT then "model=url,url" pairs
gateway_config() {
  local file=$1 port=$2 admin=$3
  shift 3
  {
    echo "# Generated by benches/load.sh."
    echo "[server]"
    echo "listen = \"127.0.0.1:$port\""
    echo "admin_listen = \"127.0.0.1:$admin\""
    echo "# Same as nginx's worker_processes."
    echo "threads = $PROXY_THREADS"
    echo "# Same as nginx's keepalive_requests below: no reconnects in a throughput run."
    echo "max_requests_per_connection = 1000000"
    local spec model urls
    for spec in "$@"; do
      model=${spec%%=*}
      urls=${spec#*=}
      echo
      echo "[[models]]"
      echo "name = \"$model\""
      echo "workers = [\"http://${urls//,/\", \"http://}\"]"
      [[ -z $MODEL_KEYS ]] || echo "$MODEL_KEYS"
    done
  } >"$file"
  # >>> API keys (auth + rate limits): the benchmark runs with a key whose budgets are too
  # generous to ever trigger, so every request pays for both checks. Should check-config
  # reject the block, the gateway is measured without it and the report says so.
  local with_keys=$file.keys
  cp "$file" "$with_keys"
  cat >>"$with_keys" <<EOF

# Generous limits: the benchmark measures the checks, never a rejection.
[[api_keys]]
name = "load-bench"
key = "$API_KEY"
requests_per_minute = 1000000000
tokens_per_minute = 1000000000000
EOF
  # <<< API keys
  if "$BIN" check-config "$with_keys" >"$TMP/check-keys.log" 2>&1; then
    mv "$with_keys" "$file"
    GATEWAY_AUTH="on ([[api_keys]] with generous limits)"
  else
    rm -f "$with_keys"
    GATEWAY_AUTH="off: this build rejects [[api_keys]] ($(head -n 1 "$TMP/check-keys.log" | cut -c1-120))"
  fi
  if [[ -n $GATEWAY_EXTRA ]]; then
    { echo; echo "# --gateway-extra $GATEWAY_EXTRA"; cat "$GATEWAY_EXTRA"; } >>"$file"
  fi
  "$BIN" check-config "$file" >&2 || die "generated gateway config is invalid: $file"
}

# start_gateway NAME CONFIG ADMIN_PORT: pid in LAST_PID
start_gateway() {
  local name=$1 config=$2 admin=$3
  start_bg "$TMP/$name.log" "$BIN" serve --config "$config"
  wait_http "http://127.0.0.1:$admin/readyz" "$LAST_PID" "$TMP/$name.log"
}

# ---------------------------------------------------------------------------------------------
# nginx: a plain reverse proxy with the same workers behind it.

nginx_config() {
  local file=$1 prefix=$2 fast_port=$3 paced_port=$4 fast_up=$5 paced_up=$6
  mkdir -p "$prefix/logs" "$prefix/tmp"
  local s fast_servers="" paced_servers=""
  for s in ${fast_up//,/ }; do fast_servers+="    server $s;"$'\n'; done
  for s in ${paced_up//,/ }; do paced_servers+="    server $s;"$'\n'; done
  cat >"$file" <<EOF
# Generated by benches/load.sh: a plain nginx reverse proxy, tuned as an operator would for
# LLM traffic (no response buffering, upstream keep-alive), nothing more.
# worker_processes matches the gateway's [server] threads ($PROXY_THREADS): each gets the
# same number of cores to work with.
worker_processes $PROXY_THREADS;
daemon off;
master_process on;
pid $prefix/nginx.pid;
error_log $prefix/logs/error.log warn;
worker_rlimit_nofile 20000;

events {
  worker_connections 10000;
}

http {
  # One line per request, as the gateway writes one access line per request.
  access_log $prefix/logs/access.log;
  client_body_temp_path $prefix/tmp/body;
  proxy_temp_path $prefix/tmp/proxy;
  fastcgi_temp_path $prefix/tmp/fastcgi;
  uwsgi_temp_path $prefix/tmp/uwsgi;
  scgi_temp_path $prefix/tmp/scgi;
  # Both proxies close a client connection after 1000 requests by default; both are
  # raised alike (the gateway's max_requests_per_connection) so neither reconnects mid-run.
  keepalive_requests 1000000;
  keepalive_timeout 60s;

  upstream bench_fast {
    least_conn;
$fast_servers    keepalive 256;
    keepalive_requests 1000000;
    keepalive_timeout 4s;
  }
  upstream bench_paced {
    least_conn;
$paced_servers    keepalive 256;
    keepalive_requests 1000000;
    keepalive_timeout 4s;
  }

  server {
    listen 127.0.0.1:$fast_port;
    location / {
      proxy_pass http://bench_fast;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
  server {
    listen 127.0.0.1:$paced_port;
    location / {
      proxy_pass http://bench_paced;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
EOF
}

# ---------------------------------------------------------------------------------------------
# Load

# loadgen ARGS...: one measurement, its JSON line appended to RESULTS; never hangs.
loadgen() {
  local budget=$1
  shift
  local line
  if ! line=$(timeout --kill-after=5 "$budget" "$LOADGEN" "$@" 2>>"$TMP/loadgen.log"); then
    tail -n 5 "$TMP/loadgen.log" >&2 || true
    die "loadgen failed or timed out: $*"
  fi
  tail -n 1 "$TMP/loadgen.log" >&2
  echo "$line" >>"$RESULTS"
}

# note_log NAME FILE: count warnings/errors in a server's log, keep a few, then truncate it.
note_log() {
  local name=$1 file=$2 n
  [[ -f $file ]] || return 0
  n=$(grep -c -i -E '"level":"(WARN|ERROR)"| (WARN|ERROR) |\[(warn|error|crit|alert|emerg)\]' "$file" || true)
  if [[ ${n:-0} -gt 0 ]]; then
    log "$name log: $n warning/error lines (first ones in $OUT/server-warnings.log)"
    { echo "== $name"; grep -m 5 -i -E '"level":"(WARN|ERROR)"| (WARN|ERROR) |\[(warn|error|crit|alert|emerg)\]' "$file" || true; } >>"$OUT/server-warnings.log"
  fi
  : >"$file"
}

children_of() { pgrep -P "$1" | tr '\n' ' ' || true; }

HEADER=$OUT/report.md
{
  echo "# vllm-gateway side-by-side load: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "- commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (dirty)'), $(nproc) cores, load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- gateway [server] threads = $PROXY_THREADS; load generator threads = $LOADGEN_THREADS; fd limit $FD_LIMIT; parts: $PARTS"
} >"$HEADER"

# ---------------------------------------------------------------------------------------------
# Part: compare (gateway vs nginx vs direct) and ceiling (loadgen vs wrk)

if has_part compare || has_part ceiling; then
  mapfile -t P < <("$LOADGEN" free-ports 10)
  SF1=${P[0]} SF2=${P[1]} SP1=${P[2]} SP2=${P[3]} GW=${P[4]} GWA=${P[5]} NF=${P[6]} NP=${P[7]}
  BG=${P[8]} BGA=${P[9]}
  log "starting workers: simulated (fast) on $SF1 $SF2, stamped (paced) on $SP1 $SP2"
  start_sim sim-fast-1 "$SF1" "$MODEL_FAST" "${FAST_ARGS[@]}"; SIM_FAST_PIDS="$LAST_PID"
  start_sim sim-fast-2 "$SF2" "$MODEL_FAST" "${FAST_ARGS[@]}"; SIM_FAST_PIDS+=" $LAST_PID"
  start_stamped stamped-1 "$SP1" "$MODEL_PACED"; SIM_PACED_PIDS="$LAST_PID"
  start_stamped stamped-2 "$SP2" "$MODEL_PACED"; SIM_PACED_PIDS+=" $LAST_PID"
fi

if has_part compare; then
  gateway_config "$TMP/gateway.toml" "$GW" "$GWA" \
    "$MODEL_FAST=127.0.0.1:$SF1,127.0.0.1:$SF2" "$MODEL_PACED=127.0.0.1:$SP1,127.0.0.1:$SP2"
  cp "$TMP/gateway.toml" "$OUT/gateway.toml"
  log "starting the gateway on $GW (auth: $GATEWAY_AUTH)"
  start_gateway gateway "$TMP/gateway.toml" "$GWA"
  GW_PID=$LAST_PID
  BASE_PID=""
  if [[ -n $BASELINE ]]; then
    # The same config on two other ports; both gateways share the workers, and the one not
    # being measured is idle.
    sed -e "s/^listen = \"127.0.0.1:$GW\"/listen = \"127.0.0.1:$BG\"/" \
      -e "s/^admin_listen = \"127.0.0.1:$GWA\"/admin_listen = \"127.0.0.1:$BGA\"/" \
      "$TMP/gateway.toml" >"$TMP/baseline.toml"
    "$BASELINE" check-config "$TMP/baseline.toml" >&2 ||
      die "the baseline build rejects the generated config ($TMP/baseline.toml)"
    log "starting the baseline build $BASELINE on $BG"
    start_bg "$TMP/baseline.log" "$BASELINE" serve --config "$TMP/baseline.toml"
    BASE_PID=$LAST_PID
    wait_http "http://127.0.0.1:$BGA/readyz" "$BASE_PID" "$TMP/baseline.log"
  fi

  nginx_config "$TMP/nginx.conf" "$TMP/nginx" "$NF" "$NP" \
    "127.0.0.1:$SF1,127.0.0.1:$SF2" "127.0.0.1:$SP1,127.0.0.1:$SP2"
  cp "$TMP/nginx.conf" "$OUT/nginx.conf"
  log "starting nginx ($($NGINX -v 2>&1 | sed 's/.*: //')) on $NF/$NP"
  "$NGINX" -t -p "$TMP/nginx" -c "$TMP/nginx.conf" >"$TMP/nginx-t.log" 2>&1 ||
    { cat "$TMP/nginx-t.log" >&2; die "nginx rejected its config"; }
  start_bg "$TMP/nginx.log" "$NGINX" -p "$TMP/nginx" -c "$TMP/nginx.conf"
  NGX_PID=$LAST_PID
  wait_http "http://127.0.0.1:$NF/health" "$NGX_PID" "$TMP/nginx/logs/error.log"
  wait_http "http://127.0.0.1:$NP/health" "$NGX_PID" "$TMP/nginx/logs/error.log"
  NGX_PIDS="$NGX_PID $(children_of "$NGX_PID")"

  {
    echo "- compare: closed loop, HTTP/1.1 keep-alive; $DURATION measured after $WARMUP warm-up; $RUNS run(s) of each (target, scenario), targets interleaved"
    echo "- gateway: auth $GATEWAY_AUTH; metrics on (admin listener); access log to a file${MODEL_KEYS:+; per model: $MODEL_KEYS}"
    echo "- nginx $($NGINX -v 2>&1 | sed 's/.*: //'): worker_processes $PROXY_THREADS, proxy_buffering off, upstream keepalive 256, least_conn, access log to a file"
    echo "- scenarios: json and sse at $CONNECTIONS connections against workers with no compute delay (16 tokens);"
    echo "  sse-paced at $PACED_CONNECTIONS connections against \`loadgen upstream\` workers (5 ms to first token, 2 ms between 16 tokens, each event stamped with its send time): a light load, where the added-latency targets are judged"
    echo "- RSS is the sum over the target's processes (gateway: 1; nginx: master + workers; direct: both workers)"
    if [[ -n $BASELINE ]]; then
      echo "- baseline: another build of the gateway, $BASELINE ($(stat -c %y "$BASELINE" | cut -d. -f1)), same config, interleaved with the other targets"
    fi
  } >>"$HEADER"

  BUDGET=$(($(secs "$DURATION") + $(secs "$WARMUP") + 60))s
  run_one() { # run scenario target
    local run=$1 scenario=$2 target=$3 port model conns=$CONNECTIONS stream=0 urls=() pids=()
    case "$scenario" in
      json) model=$MODEL_FAST ;;
      sse) model=$MODEL_FAST; stream=1 ;;
      sse-paced) model=$MODEL_PACED; stream=1; conns=$PACED_CONNECTIONS ;;
    esac
    case "$target" in
      gateway) urls=(--url "http://127.0.0.1:$GW/v1/chat/completions"); pids=("$GW_PID") ;;
      baseline) urls=(--url "http://127.0.0.1:$BG/v1/chat/completions"); pids=("$BASE_PID") ;;
      nginx)
        if [[ $model == "$MODEL_FAST" ]]; then port=$NF; else port=$NP; fi
        urls=(--url "http://127.0.0.1:$port/v1/chat/completions")
        read -r -a pids <<<"$NGX_PIDS" ;;
      direct)
        if [[ $model == "$MODEL_FAST" ]]; then
          urls=(--url "http://127.0.0.1:$SF1/v1/chat/completions" --url "http://127.0.0.1:$SF2/v1/chat/completions")
          read -r -a pids <<<"$SIM_FAST_PIDS"
        else
          urls=(--url "http://127.0.0.1:$SP1/v1/chat/completions" --url "http://127.0.0.1:$SP2/v1/chat/completions")
          read -r -a pids <<<"$SIM_PACED_PIDS"
        fi ;;
    esac
    local watch=() p
    for p in "${pids[@]}"; do watch+=(--watch-pid "$p"); done
    log "run $run/$RUNS: $scenario -> $target"
    loadgen "$BUDGET" run "${urls[@]}" --model "$model" --api-key "$API_KEY" \
      --connections "$conns" --duration "$DURATION" --warmup "$WARMUP" \
      --threads "$LOADGEN_THREADS" --stream-fraction "$stream" "${watch[@]}" \
      --label part=compare --label run="$run" --label scenario="$scenario" --label target="$target"
    note_log gateway "$TMP/gateway.log"
    note_log baseline "$TMP/baseline.log"
    note_log nginx-error "$TMP/nginx/logs/error.log"
    : >"$TMP/nginx/logs/access.log"
  }

  TARGET_ORDER=(gateway nginx direct)
  [[ -z $BASELINE ]] || TARGET_ORDER+=(baseline)
  NT=${#TARGET_ORDER[@]}
  for run in $(seq "$RUNS"); do
    for scenario in json sse sse-paced; do
      for i in $(seq 0 $((NT - 1))); do
        # Rotate the order each run so no target always goes first (or right after another).
        run_one "$run" "$scenario" "${TARGET_ORDER[$(((i + run - 1) % NT))]}"
      done
    done
  done
  stop_pids "$GW_PID" "$NGX_PID" ${BASE_PID:+"$BASE_PID"}
fi

if has_part ceiling; then
  # The load generator must not be what limits the numbers: measure it straight against the
  # fast workers, and wrk beside it (wrk cannot time SSE events, only requests).
  CEIL_D=$(secs "$DURATION")
  for scenario in json sse; do
    stream=0
    [[ $scenario == sse ]] && stream=1
    log "ceiling: loadgen ($LOADGEN_THREADS thread) -> worker, $scenario"
    loadgen "$((CEIL_D + 30))s" run --url "http://127.0.0.1:$SF1/v1/chat/completions" \
      --model "$MODEL_FAST" --api-key "$API_KEY" --connections "$CONNECTIONS" \
      --duration "$DURATION" --warmup 1s --threads "$LOADGEN_THREADS" --stream-fraction "$stream" \
      --label part=ceiling --label scenario="$scenario" --label tool=loadgen
    if [[ $HAVE_WRK == 1 ]]; then
      body="{\"model\":\"$MODEL_FAST\",\"messages\":[{\"role\":\"user\",\"content\":\"Explain in one paragraph why a reverse proxy keeps upstream connections open.\"}],\"max_tokens\":16"
      [[ $stream == 1 ]] && body+=',"stream":true'
      body+='}'
      cat >"$TMP/wrk.lua" <<EOF
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $API_KEY"
EOF
      log "ceiling: wrk -t$LOADGEN_THREADS -> worker, $scenario"
      TIMEFORMAT='%U %S'
      { time timeout --kill-after=5 "$((CEIL_D + 30))" wrk -t"$LOADGEN_THREADS" -c"$CONNECTIONS" \
          -d"${CEIL_D}s" --latency -s "$TMP/wrk.lua" "http://127.0.0.1:$SF1/v1/chat/completions" \
          >"$TMP/wrk.out"; } 2>"$TMP/wrk.time"
      # wrk prints latencies as 812.00us / 1.20ms / 1.01s.
      to_us() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) print v+0; else if (v ~ /ms$/) print v*1000; else if (v ~ /s$/) print v*1000000; else print "null" }'; }
      rps=$(awk '/^Requests\/sec:/ {print $2}' "$TMP/wrk.out")
      reqs=$(awk '/requests in/ {print $1}' "$TMP/wrk.out")
      non2xx=$(awk '/Non-2xx/ {print $NF}' "$TMP/wrk.out")
      p50=$(to_us "$(awk '$1 == "50%" {print $2}' "$TMP/wrk.out")")
      p99=$(to_us "$(awk '$1 == "99%" {print $2}' "$TMP/wrk.out")")
      read -r cu cs <"$TMP/wrk.time"
      cpu_us=$(awk -v u="$cu" -v s="$cs" -v n="${reqs:-0}" 'BEGIN { if (n > 0) printf "%.1f", (u + s) * 1e6 / n; else print "null" }')
      echo "{\"kind\":\"wrk\",\"labels\":{\"part\":\"ceiling\",\"scenario\":\"$scenario\",\"tool\":\"wrk\"},\"connections\":$CONNECTIONS,\"threads\":$LOADGEN_THREADS,\"rps\":${rps:-null},\"errors\":${non2xx:-0},\"latency_us\":{\"p50\":${p50:-null},\"p99\":${p99:-null}},\"loadgen_cpu_us_per_req\":$cpu_us}" >>"$RESULTS"
      log "wrk: $rps req/s"
    else
      log "wrk is not installed: skipping the wrk comparison (apt-get install wrk)"
    fi
  done
fi

if has_part compare || has_part ceiling; then
  # shellcheck disable=SC2086
  stop_pids $SIM_FAST_PIDS $SIM_PACED_PIDS
fi

# ---------------------------------------------------------------------------------------------
# Part: many concurrent open streams through a fresh gateway

if has_part streams; then
  mapfile -t P < <("$LOADGEN" free-ports 4)
  SS1=${P[0]} SS2=${P[1]} GW=${P[2]} GWA=${P[3]}
  # Each stream holds two descriptors in the gateway (client and worker sockets) beside a few
  # dozen of its own. Past the limit, accept() fails with EMFILE and streams wait in the
  # backlog, so the "all open" moment is never clean: run what fits and project to the asked
  # number (the report says so). --streams-force runs the asked number anyway.
  fit=$(((FD_LIMIT - 64) / 2))
  STREAMS_ASKED=$STREAMS
  if ((STREAMS > fit)) && [[ $STREAMS_FORCE == 0 ]]; then
    log "note: $STREAMS streams need ~$((2 * STREAMS + 64)) descriptors in the gateway; the limit here is $FD_LIMIT (hard). Running $fit streams and projecting to $STREAMS (--streams-force to run $STREAMS anyway)"
    STREAMS=$fit
  fi
  # Long streams: a token a second, STREAM_SECONDS tokens.
  SLOW_ARGS=(--ttft-ms 200 --itl-ms 1000 --output-tokens "$STREAM_SECONDS" --max-num-seqs 100000 --threads 1)
  log "streams: workers on $SS1 $SS2, a fresh gateway on $GW, $STREAMS streams of ~${STREAM_SECONDS} s"
  start_sim sim-slow-1 "$SS1" "$MODEL_SLOW" "${SLOW_ARGS[@]}"; SLOW_PIDS="$LAST_PID"
  start_sim sim-slow-2 "$SS2" "$MODEL_SLOW" "${SLOW_ARGS[@]}"; SLOW_PIDS+=" $LAST_PID"
  gateway_config "$TMP/gateway-streams.toml" "$GW" "$GWA" "$MODEL_SLOW=127.0.0.1:$SS1,127.0.0.1:$SS2"
  start_gateway gateway-streams "$TMP/gateway-streams.toml" "$GWA"
  GWS_PID=$LAST_PID
  RATE=1000
  TIMEOUT_S=$((STREAM_SECONDS + 60))
  loadgen "$((STREAMS / RATE + TIMEOUT_S + 60))s" streams --url "http://127.0.0.1:$GW/v1/chat/completions" \
    --model "$MODEL_SLOW" --max-tokens "$STREAM_SECONDS" --api-key "$API_KEY" \
    --connections "$STREAMS" --connect-rate "$RATE" --timeout "${TIMEOUT_S}s" --buf 4096 \
    --watch-pid "$GWS_PID" --sample-every 1s --settle 8s --label part=streams --label asked="$STREAMS_ASKED"
  note_log gateway-streams "$TMP/gateway-streams.log"
  # shellcheck disable=SC2086
  stop_pids "$GWS_PID" $SLOW_PIDS
  echo "- streams: $STREAMS streams (one connection each, opened at $RATE/s), workers: 1 token/s, $STREAM_SECONDS tokens" >>"$HEADER"
fi

# ---------------------------------------------------------------------------------------------
# Part: soak

if has_part soak; then
  mapfile -t P < <("$LOADGEN" free-ports 4)
  SK1=${P[0]} SK2=${P[1]} GW=${P[2]} GWA=${P[3]}
  SOAK_S=$(secs "$SOAK")
  # Warm-up: long enough for allocator pools and connection pools to fill.
  SOAK_WARM=$((SOAK_S / 6))
  ((SOAK_WARM < 5)) && SOAK_WARM=5
  ((SOAK_WARM > 60)) && SOAK_WARM=60
  EVERY=$((SOAK_S / 30))
  ((EVERY < 2)) && EVERY=2
  ((EVERY > 10)) && EVERY=10
  SOAK_ARGS=(--ttft-ms 2 --itl-ms 1 --output-tokens 16 --max-num-seqs 4096 --threads 1)
  log "soak: $SOAK of mixed load (warm-up ${SOAK_WARM}s) through a fresh gateway on $GW"
  start_sim sim-soak-1 "$SK1" "$MODEL_FAST" "${SOAK_ARGS[@]}"; SOAK_PIDS="$LAST_PID"
  start_sim sim-soak-2 "$SK2" "$MODEL_FAST" "${SOAK_ARGS[@]}"; SOAK_PIDS+=" $LAST_PID"
  gateway_config "$TMP/gateway-soak.toml" "$GW" "$GWA" "$MODEL_FAST=127.0.0.1:$SK1,127.0.0.1:$SK2"
  start_gateway gateway-soak "$TMP/gateway-soak.toml" "$GWA"
  GWK_PID=$LAST_PID
  # Settle longer than the gateway's upstream idle timeout (4 s), so pooled connections to
  # the workers are gone and only leaks remain.
  loadgen "$((SOAK_S + SOAK_WARM + 90))s" run --url "http://127.0.0.1:$GW/v1/chat/completions" \
    --model "$MODEL_FAST" --api-key "$API_KEY" --connections "$SOAK_CONNECTIONS" \
    --duration "${SOAK_S}s" --warmup "${SOAK_WARM}s" --threads "$LOADGEN_THREADS" \
    --stream-fraction 0.5 --abort-fraction 0.2 --close-fraction 0.02 \
    --watch-pid "$GWK_PID" --sample-every "${EVERY}s" --count-close-wait --keep-samples \
    --settle 8s --label part=soak
  # The gateway log is kept whole for the soak (it is also what the access-log size costs).
  note_log gateway-soak "$TMP/gateway-soak.log"
  # shellcheck disable=SC2086
  stop_pids "$GWK_PID" $SOAK_PIDS
fi

# ---------------------------------------------------------------------------------------------
# Report
log "results: $RESULTS"
status=0
"$LOADGEN" report --results "$RESULTS" >>"$HEADER" || status=$?
echo >&2
cat "$HEADER"
log "report: $HEADER"
exit "$status"
