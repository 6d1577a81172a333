#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-2-Clause
# End-to-end test of atscale-example-server (examples/server/server.c) with the real Redis tools.
# Usage: tests/example_server.sh PATH/TO/atscale-example-server   (ctest: example_server)
#
# Servers, each on a port the kernel picks (--port 0; the server prints the port it bound, so no
# other process can take it between picking and binding):
#   bench:   --no-limit --timeout-ms 100: redis-benchmark (which stops at its first error reply)
#            runs PING and GET to the end, and a GET answers with its value;
#   limited: --rate 50 --burst 10 --timeout-ms 1 --backend-min-ms 2: every admitted GET outlives
#            its deadline, so the deadline path is taken every time, not by chance;
#   slow, pipe and fdlimit: for (5), (6) and (7) below.
# Checks: (1) the benchmark completes; (2) one named client sending PINGs faster than its rate gets
# at least its burst and at most burst + rate x elapsed + 1 admitted, every other reply LIMITED
# with a retry-after in range; (3) no internal text (the backend timing, addresses, ports, an
# unknown command's name) reaches a client, while the server's own log shows those texts were
# made; (4) a GET whose deadline is shorter than the backend gets DEADLINE_EXCEEDED, never a
# value; (5) SIGTERM makes each server exit 0, within a bound, with its summary printed. Under
# ASan a leak or memory error makes the exit status non-zero, so (5) also fails on those. (6) GETs
# past a connection's queue in one write are all answered; (7) a server out of descriptors does
# not spin, and accepts again once a connection closes.
set -euo pipefail
server=${1:?usage: example_server.sh SERVER_BINARY}
for tool in redis-cli redis-benchmark; do
  command -v "$tool" >/dev/null || { echo "example_server: $tool not found: apt-get install redis-tools (scripts/deps.sh installs it)" >&2; exit 1; }
done
# Leaks fail the run when the server is built with ASan (scripts/test.sh sets the same).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

work=$(mktemp -d /tmp/atscale-example-server-XXXXXX)
declare -A pid port
cleanup() {
  local name
  for name in "${!pid[@]}"; do kill -KILL "${pid[$name]}" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "example_server: FAIL: $*" >&2
  local f
  for f in "$work"/*; do [ -f "$f" ] && { echo "--- ${f##*/} (last 20 lines)"; tail -n 20 "$f"; }; done >&2
  exit 1
}
now_ms() { date +%s%3N; }
pace() { sleep 0.01; } # polling pace only: every wait below is on an observed state, with a bound

# start NAME [--fds N] ARGS...: starts a server (with at most N descriptors) and waits (at most
# 20 s) until it answers PING.
start() {
  local name=$1 fds=
  shift
  if [ "$1" = --fds ]; then
    fds=$2
    shift 2
  fi
  (
    [ -z "$fds" ] || ulimit -n "$fds"
    exec "$server" --port 0 "$@"
  ) >"$work/$name.out" 2>"$work/$name.err" &
  pid[$name]=$!
  local limit=$(($(now_ms) + 20000))
  until grep -q '^listening on .* port [0-9]*$' "$work/$name.out"; do
    kill -0 "${pid[$name]}" 2>/dev/null || fail "$name server exited before listening"
    [ "$(now_ms)" -lt "$limit" ] || fail "$name server did not print its port within 20 s"
    pace
  done
  port[$name]=$(sed -n 's/^listening on .* port \([0-9]*\)$/\1/p' "$work/$name.out")
  until [ "$(redis-cli -p "${port[$name]}" PING 2>/dev/null)" = PONG ]; do
    [ "$(now_ms)" -lt "$limit" ] || fail "$name server did not answer PING within 20 s"
    pace
  done
  echo "$name server: pid ${pid[$name]}, port ${port[$name]}"
}

# stop NAME: SIGTERM, then at most 10 s for the exit; the status must be 0.
stop() {
  local name=$1 rc=0
  kill -TERM "${pid[$name]}" 2>/dev/null || true # a server already told to stop is still ours to reap
  local t0 limit
  t0=$(now_ms)
  limit=$((t0 + 10000))
  while kill -0 "${pid[$name]}" 2>/dev/null && [ "$(now_ms)" -lt "$limit" ]; do pace; done
  local waited=$(($(now_ms) - t0))
  kill -0 "${pid[$name]}" 2>/dev/null && fail "$name server still running 10 s after SIGTERM"
  wait "${pid[$name]}" || rc=$?
  unset "pid[$name]"
  grep -E 'AddressSanitizer|LeakSanitizer|runtime error' "$work/$name.err" && fail "$name server: sanitizer report"
  [ "$rc" -eq 0 ] || fail "$name server exited with status $rc after SIGTERM"
  grep '^atscale-example-server: admitted' "$work/$name.err" || fail "$name server printed no summary"
  echo "(5) $name server: exit 0 about ${waited} ms after SIGTERM"
}

start bench --no-limit --timeout-ms 100
start limited --rate 50 --burst 10 --timeout-ms 1 --backend-min-ms 2 --backend-max-ms 3 --log
rate=50 burst=10

# (1) redis-benchmark, bounded: it exits non-zero at the first error reply.
timeout 120 redis-benchmark -p "${port[bench]}" -n 2000 -c 10 -t ping,get -q >"$work/bench.txt" 2>&1 ||
  fail "(1) redis-benchmark failed or ran past 120 s"
tr '\r' '\n' <"$work/bench.txt" >"$work/bench_lines.txt" # its progress lines end in CR
grep -q '^ *GET: [0-9.]* requests per second' "$work/bench_lines.txt" || fail "(1) no GET result from redis-benchmark"
grep -qi 'error' "$work/bench_lines.txt" && fail "(1) redis-benchmark saw an error reply"
echo "(1) redis-benchmark: $(grep -E '^ *[A-Z_]+: [0-9.]+ requests per second' "$work/bench_lines.txt" | tr -s ' \n' ' ')"
[ "$(redis-cli -p "${port[bench]}" GET k1)" = value-of-k1 ] || fail "(1) GET k1 did not answer value-of-k1"

# (2) one named client, 200 PINGs back to back: the keyed bound, and LIMITED with a retry-after.
n=200
t0=$(now_ms)
{ echo "CLIENT SETNAME client-two"; for ((i = 0; i < n; i++)); do echo PING; done; } |
  redis-cli -p "${port[limited]}" >"$work/replies2.txt"
elapsed=$(($(now_ms) - t0))
pong=$(grep -c '^PONG$' "$work/replies2.txt" || true)
limited=$(grep -cE '^LIMITED Too many requests\. Try again later\. retry-after-ms=[0-9]+$' "$work/replies2.txt" || true)
[ $((pong + limited)) -eq "$n" ] || fail "(2) $pong PONG + $limited LIMITED replies, expected $n in all"
[ "$pong" -ge "$burst" ] || fail "(2) $pong admitted, fewer than the burst $burst"
# admitted <= burst + rate x elapsed + 1, in integer milliseconds
[ $((pong * 1000)) -le $(((burst + 1) * 1000 + rate * elapsed)) ] ||
  fail "(2) $pong admitted in $elapsed ms, above $burst + $rate/s x elapsed + 1"
max_retry=$((1000 / rate + 1))
bad=$(sed -n 's/.*retry-after-ms=\([0-9]*\)$/\1/p' "$work/replies2.txt" | awk -v m="$max_retry" '$1 < 1 || $1 > m' | head -n 1)
[ -z "$bad" ] || fail "(2) retry-after-ms=$bad outside 1..$max_retry"
echo "(2) $n PINGs in $elapsed ms: $pong admitted (bound $burst..$((burst + 1 + rate * elapsed / 1000))), $limited LIMITED"

# (4) GETs whose 1 ms deadline is shorter than the 2-3 ms backend: DEADLINE_EXCEEDED, never a value.
{ echo "CLIENT SETNAME client-four"; for ((i = 0; i < 20; i++)); do echo "GET key$i"; done; } |
  redis-cli -p "${port[limited]}" >"$work/replies4.txt"
late=$(grep -c '^DEADLINE_EXCEEDED The request took too long\.$' "$work/replies4.txt" || true)
limited4=$(grep -c '^LIMITED ' "$work/replies4.txt" || true)
[ "$late" -ge 1 ] || fail "(4) no DEADLINE_EXCEEDED reply"
[ $((late + limited4)) -eq 20 ] || fail "(4) $late DEADLINE_EXCEEDED + $limited4 LIMITED, expected 20 (no value)"
grep -q 'value-of' "$work/replies4.txt" && fail "(4) a GET past its deadline got a value"
echo "(4) 20 GETs: $late DEADLINE_EXCEEDED, $limited4 LIMITED, no late value"

# Bad input: a client name the keyed map cannot take, and an unknown command.
long=$(printf 'n%.0s' $(seq 300))
{ echo "CLIENT SETNAME $long"; echo "NOSUCHCOMMAND secretarg"; } |
  redis-cli -p "${port[limited]}" >"$work/replies_bad.txt"
[ "$(grep -c '^INVALID_ARGUMENT ' "$work/replies_bad.txt")" -eq 2 ] || fail "bad input: expected two INVALID_ARGUMENT replies"

# (3) Internal text stays internal: the server's log has it, no reply does.
for marker in 'backend needs' "port ${port[limited]}" '127.0.0.1' 'NOSUCHCOMMAND' 'over 50/s'; do
  grep -qF "$marker" "$work/limited.err" || fail "(3) the server log lacks '$marker': the check would prove nothing"
done
for marker in backend budget '127.0.0.1' "${port[limited]}" "${port[bench]}" NOSUCHCOMMAND secretarg client-two client-four 'over 50'; do
  grep -qF -- "$marker" "$work"/replies*.txt && fail "(3) a reply carries internal text: '$marker'"
done
echo "(3) no reply carries internal text (the server's log has it)"

# (5) SIGTERM with a GET in flight: it is answered CANCELLED, not dropped and not left waiting.
# PING and GET go in one write, so the server reads both in one batch: once PONG is back, the GET
# waits on its 30 s backend.
start slow --no-limit --timeout-ms 60000 --backend-min-ms 30000 --backend-max-ms 30000
exec 3<>"/dev/tcp/127.0.0.1/${port[slow]}"
printf 'PING\r\nGET inflight\r\n' >&3
read -r -t 20 pong_line <&3 || fail "(5) no PONG from the slow server"
[ "${pong_line%$'\r'}" = +PONG ] || fail "(5) expected +PONG, got '$pong_line'"
kill -TERM "${pid[slow]}"
read -r -t 20 cancel_line <&3 || fail "(5) the GET in flight got no reply at shutdown"
exec 3<&-
[ "${cancel_line%$'\r'}" = "-CANCELLED The server is shutting down." ] ||
  fail "(5) the GET in flight got '$cancel_line', expected -CANCELLED"
echo "(5) a GET in flight at SIGTERM: ${cancel_line%$'\r'}"
stop slow
grep -q 'cancelled 1,' "$work/slow.err" || fail "(5) the slow server did not count one cancelled request"

# (6) More GETs in one write than a connection queues at once (1024): the server parses the rest
# after the others, and answers every one (those it parsed late used to wait for good: the timer
# was armed before they were queued).
start pipe --no-limit --timeout-ms 50 --backend-max-ms 0
n=3000
for ((i = 0; i < n; i++)); do printf 'GET k%d\r\n' "$i"; done >"$work/pipelined.txt"
exec 4<>"/dev/tcp/127.0.0.1/${port[pipe]}"
cat "$work/pipelined.txt" >&4 # one write
got=0
while [ "$got" -lt "$n" ]; do
  read -r -t 10 line <&4 || fail "(6) $got of $n pipelined GETs answered; no reply for 10 s"
  case $line in value-of-* | -*) got=$((got + 1)) ;; esac
done
exec 4<&-
echo "(6) $n GETs in one write: every one answered"
stop pipe

# (7) At its descriptor limit the server stops watching its listener, which stays readable (it used
# to spin on it at a full CPU), and accepts again once a connection closes.
start fdlimit --fds 32 --no-limit
conns=() waiting=
for ((i = 0; i < 64; i++)); do
  exec {fd}<>"/dev/tcp/127.0.0.1/${port[fdlimit]}"
  conns+=("$fd")
  printf 'PING\r\n' >&"$fd"
  if ! read -r -t 3 line <&"$fd"; then # not accepted: the server is out of descriptors
    waiting=$fd
    break
  fi
done
[ -n "$waiting" ] || fail "(7) 64 connections answered by a server limited to 32 descriptors"
cpu_ticks() { awk '{print $14 + $15}' "/proc/${pid[fdlimit]}/stat"; } # utime + stime
c0=$(cpu_ticks)
t0=$(now_ms)
sleep 1 # a measurement window: the server's CPU time while nothing happens
c1=$(cpu_ticks)
t1=$(now_ms)
share=$(((c1 - c0) * 100000 / $(getconf CLK_TCK) / (t1 - t0)))
[ "$share" -lt 50 ] || fail "(7) the server used ${share}% of a CPU, idle at its descriptor limit"
first=${conns[0]}
exec {first}<&-
read -r -t 10 line <&"$waiting" || fail "(7) the waiting connection got no answer once another closed"
[ "${line%$'\r'}" = +PONG ] || fail "(7) the waiting connection got '$line', expected +PONG"
for fd in "${conns[@]:1}"; do exec {fd}<&-; done
echo "(7) at its descriptor limit: ${share}% of a CPU while idle; accepts again once a connection closes"
stop fdlimit

stop bench
stop limited
limited_server=$(sed -n 's/^atscale-example-server: admitted [0-9]*, limited \([0-9]*\),.*/\1/p' "$work/limited.err")
[ "$limited_server" -eq $((limited + limited4)) ] ||
  fail "the server counted $limited_server limited, the clients saw $((limited + limited4))"
echo "example_server: all checks passed"
