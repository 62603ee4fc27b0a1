#!/usr/bin/env bash
# Run with: bash scripts/bench-e2e.sh
#
# End-to-end throughput and latency of the axum hello world in
# examples/bench_server.rs, in several configurations (by default: bare,
# the default LifecycleLayer, and tower-http's TraceLayer), over HTTP/1.1
# (wrk) and h2c with prior knowledge (h2load).
#
# Interleaved: each round starts each configuration's server in turn,
# loads it and stops it; the order rotates from round to round, so slow
# drift in background load hits every configuration alike. The table shows
# the median over the rounds of each figure, and for each configuration
# after the first the ratio to the first: of the medians, and the median of
# the per-round ratios.
#
# Per server start: a 1 s wrk warm-up (not counted), then
#   wrk    -t2 -c64 -d$WRK_DURATION --latency  http://127.0.0.1:$PORT/
#   h2load -n $H2_REQUESTS -c 64 -m 10         http://127.0.0.1:$PORT/
# h2load reports min/max/mean/sd of the request time; the p99 is computed
# from its --log-file (one line per request, the third column is the
# request's time in microseconds).
#
# Knobs (environment): ROUNDS (5), WRK_DURATION (10s), H2_REQUESTS
# (200000), PORT (3917), CONFIGS, the configurations of
# examples/bench_server.rs compared, the first being the reference ("bare
# default trace"; CONFIGS="layer watched" measures the connection watch).
# A and B, if set, give a pair instead (CONFIGS="$A $B"). The defaults take
# about 2 minutes per configuration after the build.
#
# The machine's cores are shared by the load generator and the server: the
# figures are what the server gets while wrk/h2load also want CPU, so
# compare the two configurations with each other, not with other machines.
#
# Installs wrk and nghttp2-client (h2load) with apt-get if they are
# missing. Only 127.0.0.1 is used; every server started is stopped on exit.

set -euo pipefail

ROUNDS=${ROUNDS:-5}
if [ -n "${A:-}" ] || [ -n "${B:-}" ]; then
    CONFIGS="${A:-bare} ${B:-layer}"
fi
CONFIGS=${CONFIGS:-bare default trace}
read -r -a ALL <<<"$CONFIGS"
REF=${ALL[0]}
WRK_DURATION=${WRK_DURATION:-10s}
H2_REQUESTS=${H2_REQUESTS:-200000}
PORT=${PORT:-3917}
CONNECTIONS=64
URL="http://127.0.0.1:${PORT}/"

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '%s\n' "$*" >&2; }

# --- tools -----------------------------------------------------------------

if ! command -v wrk >/dev/null 2>&1 || ! command -v h2load >/dev/null 2>&1; then
    log "installing wrk and nghttp2-client (h2load)"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk nghttp2-client >&2
fi

log "building the server (release)"
cargo build --release --example bench_server >&2
SERVER_BIN=target/release/examples/bench_server

# --- servers ---------------------------------------------------------------

WORK=$(mktemp -d)
SERVER_PID=""

stop_server() {
    if [ -n "$SERVER_PID" ]; then
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            kill "$SERVER_PID" 2>/dev/null || true
            wait "$SERVER_PID" 2>/dev/null || true
        fi
        SERVER_PID=""
    fi
}

cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/${PORT}") 2>/dev/null
}

# start_server CONFIG: starts it and waits for "listening on".
start_server() {
    local config=$1
    if port_in_use; then
        log "error: something already listens on 127.0.0.1:${PORT} (set PORT=...)"
        exit 1
    fi
    "$SERVER_BIN" "$config" "$PORT" >"$WORK/server.out" 2>"$WORK/server.err" &
    SERVER_PID=$!
    local i
    for i in $(seq 1 100); do
        if grep -q "^listening on " "$WORK/server.out" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            log "error: the $config server exited:"
            cat "$WORK/server.err" >&2
            SERVER_PID=""
            exit 1
        fi
        sleep 0.1
    done
    log "error: the $config server did not report listening within 10 s"
    exit 1
}

check_server_alive() {
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        log "error: the server died during the run:"
        cat "$WORK/server.err" >&2
        SERVER_PID=""
        exit 1
    fi
}

# --- parsing ---------------------------------------------------------------

# to_ms VALUE: "850.00us" / "1.23ms" / "2.1s" -> milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/)      { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v + 0 }
        else if (v ~ /s$/)  { sub(/s$/, "", v);  printf "%.3f", v * 1000 }
        else                { printf "nan" }
    }'
}

# median: of the numbers on stdin, one per line.
median() {
    sort -g | awk '{ a[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2
    }'
}

# p99_from_log FILE: nearest-rank p99 of h2load's per-request times, in ms.
p99_from_log() {
    awk -F'\t' '{ print $3 }' "$1" | sort -n | awk '{ a[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        r = int(NR * 0.99); if (r < NR * 0.99) r++; if (r < 1) r = 1
        printf "%.3f", a[r] / 1000
    }'
}

# --- one measurement ---------------------------------------------------------

RESULTS="$WORK/results.tsv" # config round metric value
: >"$RESULTS"
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"; }

measure() {
    local config=$1 round=$2
    local wrk_out="$WORK/wrk-$config-$round.txt"
    local h2_out="$WORK/h2load-$config-$round.txt"
    local h2_log="$WORK/h2load-$config-$round.log"

    start_server "$config"

    wrk -t2 -c"$CONNECTIONS" -d1s "$URL" >/dev/null

    wrk -t2 -c"$CONNECTIONS" -d"$WRK_DURATION" --latency "$URL" >"$wrk_out"
    check_server_alive
    local rps p99 errors
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$wrk_out")
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$wrk_out")")
    errors=$(awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ {
        for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) { v = $i; sub(/,/, "", v); n += v } }
        END { print n + 0 }' "$wrk_out")
    record "$config" "$round" h1_rps "$rps"
    record "$config" "$round" h1_p99 "$p99"
    record "$config" "$round" h1_errors "$errors"

    rm -f "$h2_log"
    h2load -n "$H2_REQUESTS" -c "$CONNECTIONS" -m 10 --log-file="$h2_log" "$URL" >"$h2_out"
    check_server_alive
    local h2_rps h2_mean h2_p99 h2_bad
    h2_rps=$(awk '/^finished in/ { print $4 }' "$h2_out")
    h2_mean=$(to_ms "$(awk '/^time for request:/ { print $6 }' "$h2_out")")
    h2_p99=$(p99_from_log "$h2_log")
    # requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
    h2_bad=$(awk '/^requests:/ { print $10 + $12 + $14 }' "$h2_out")
    local protocol
    protocol=$(awk '/^Application protocol:/ { print $3 }' "$h2_out")
    if [ "$protocol" != "h2c" ]; then
        log "warning: h2load negotiated '${protocol}', not h2c"
    fi
    record "$config" "$round" h2_rps "$h2_rps"
    record "$config" "$round" h2_mean "$h2_mean"
    record "$config" "$round" h2_p99 "$h2_p99"
    record "$config" "$round" h2_errors "$h2_bad"

    stop_server
    log "round $round $config: HTTP/1.1 ${rps} req/s p99 ${p99} ms | h2c ${h2_rps} req/s mean ${h2_mean} ms p99 ${h2_p99} ms | errors ${errors}/${h2_bad}"
}

# --- the rounds ----------------------------------------------------------------

log "$ROUNDS rounds: wrk -t2 -c$CONNECTIONS -d$WRK_DURATION --latency, h2load -n $H2_REQUESTS -c $CONNECTIONS -m 10, on $URL ($(nproc) cores)"
started=$(date +%s)
for round in $(seq 1 "$ROUNDS"); do
    n=${#ALL[@]}
    for k in $(seq 0 $((n - 1))); do
        measure "${ALL[$(((k + round) % n))]}" "$round"
    done
done
elapsed=$(($(date +%s) - started))

# --- the table ------------------------------------------------------------------

med() { awk -F'\t' -v c="$1" -v m="$2" '$1 == c && $3 == m { print $4 }' "$RESULTS" | median; }
total() { awk -F'\t' -v c="$1" -v m="$2" '$1 == c && $3 == m { n += $4 } END { print n + 0 }' "$RESULTS"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "nan"; else printf "%.3f", a / b }'; }

METRICS="h1_rps h1_p99 h2_rps h2_mean h2_p99"
declare -A M
for config in "${ALL[@]}"; do
    for metric in $METRICS; do
        M[$config,$metric]=$(med "$config" "$metric")
    done
done

# The median of the per-round ratios of config $2 to the reference: each
# round ran them close together, so this one cancels drift in background
# load better than the ratio of medians.
paired() {
    awk -F'\t' -v m="$1" -v a="$REF" -v b="$2" '$3 == m { v[$1, $2] = $4; r[$2] = 1 } END {
        for (k in r) if (v[a, k] + 0 != 0) printf "%.6f\n", v[b, k] / v[a, k]
    }' "$RESULTS" | median | awk '{ printf "%.3f", $1 }'
}

echo
echo "## End-to-end: axum hello world, ${ALL[*]}"
echo
echo "Medians over $ROUNDS interleaved rounds, the order rotated (${elapsed} s of load); $(nproc) cores shared by the server and the load generator."
echo "HTTP/1.1: \`wrk -t2 -c$CONNECTIONS -d$WRK_DURATION --latency\`; h2c: \`h2load -n $H2_REQUESTS -c $CONNECTIONS -m 10\` (p99 from its per-request log)."
echo
echo "| config | HTTP/1.1 req/s | HTTP/1.1 p99 (ms) | h2c req/s | h2c mean (ms) | h2c p99 (ms) |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
for config in "${ALL[@]}"; do
    printf '| %s | %s | %s | %s | %s | %s |\n' "$config" \
        "${M[$config,h1_rps]}" "${M[$config,h1_p99]}" \
        "${M[$config,h2_rps]}" "${M[$config,h2_mean]}" "${M[$config,h2_p99]}"
done
for config in "${ALL[@]:1}"; do
    row="| $config/$REF, ratio of medians |"
    for metric in $METRICS; do
        row="$row $(ratio "${M[$config,$metric]}" "${M[$REF,$metric]}") |"
    done
    echo "$row"
    row="| $config/$REF, median of per-round ratios |"
    for metric in $METRICS; do
        row="$row $(paired "$metric" "$config") |"
    done
    echo "$row"
done
echo
errors="Errors (all rounds):"
for config in "${ALL[@]}"; do
    errors="$errors $config HTTP/1.1 $(total "$config" h1_errors), h2c $(total "$config" h2_errors);"
done
echo "${errors%;}."
echo
echo "Per round:"
echo
echo "| round | config | HTTP/1.1 req/s | HTTP/1.1 p99 (ms) | h2c req/s | h2c mean (ms) | h2c p99 (ms) |"
echo "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"
for round in $(seq 1 "$ROUNDS"); do
    for config in "${ALL[@]}"; do
        row="| $round | $config |"
        for metric in $METRICS; do
            v=$(awk -F'\t' -v c="$config" -v r="$round" -v m="$metric" \
                '$1 == c && $2 == r && $3 == m { print $4 }' "$RESULTS")
            row="$row $v |"
        done
        echo "$row"
    done
done
