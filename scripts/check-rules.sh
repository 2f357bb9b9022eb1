#!/usr/bin/env bash
# Validate and unit-test the Prometheus recording/alerting rules in deploy/prometheus/, and check
# the Alertmanager configuration in deploy/alertmanager/ routes every `notify` value they use.
#
#   scripts/check-rules.sh            # what `make rules` (and therefore `make test` / CI) runs
#
# Needs `amtool` too: looked up on PATH, /usr/bin/amtool and ./prometheus-bin/; when missing, it is
# unpacked from Debian's `prometheus-alertmanager` package into ./prometheus-bin/ (apt-get download
# and dpkg-deb: nothing is installed, no server started). Set AMTOOL=/path/to/amtool to force one.
# Needs `promtool`. It is looked up on PATH, then at /usr/bin/promtool, then in ./prometheus-bin/.
# When it is missing and we run as root (CI containers), Debian's `prometheus` package is installed
# non-interactively; the package's own server is never left running. Set PROMTOOL=/path/to/promtool
# to force a particular binary. Any failure exits non-zero with a message saying what failed.
set -euo pipefail
cd "$(dirname "$0")/.."

RULES=deploy/prometheus/alerts.yml
TESTS=deploy/prometheus/alerts.test.yml
ALERTMANAGER=deploy/alertmanager/alertmanager.yml

die() { echo "check-rules: ERROR: $*" >&2; exit 1; }

# find_tool NAME: the executable NAME on PATH, in /usr/bin or in ./prometheus-bin/.
find_tool() {
  local candidate
  for candidate in "$(command -v "$1" 2>/dev/null || true)" "/usr/bin/$1" "prometheus-bin/$1"; do
    if [[ -n "$candidate" && -x "$candidate" ]]; then echo "$candidate"; return 0; fi
  done
  return 1
}

# Stop a Prometheus server the package may have started (systemd, SysV init or a bare daemon).
stop_packaged_server() {
  if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
    systemctl stop prometheus.service >/dev/null 2>&1 || true
    systemctl disable prometheus.service >/dev/null 2>&1 || true
  fi
  if [[ -x /etc/init.d/prometheus ]]; then
    /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  fi
  # Whatever is left: only processes whose executable is the packaged server binary.
  local pid exe
  for pid in $(pgrep -x prometheus 2>/dev/null || true); do
    exe=$(readlink -f "/proc/$pid/exe" 2>/dev/null || true)
    if [[ "$exe" == /usr/bin/prometheus ]]; then
      echo "check-rules: stopping Prometheus server started by the package (pid $pid)"
      kill "$pid" 2>/dev/null || true
    fi
  done
  for pid in $(pgrep -x prometheus 2>/dev/null || true); do
    exe=$(readlink -f "/proc/$pid/exe" 2>/dev/null || true)
    if [[ "$exe" == /usr/bin/prometheus ]]; then
      sleep 2; kill -9 "$pid" 2>/dev/null || true
    fi
  done
}

install_promtool() {
  [[ "$(id -u)" == 0 ]] || die "promtool not found and not root: install it (Debian/Ubuntu: \
'sudo apt-get install --no-install-recommends prometheus'; or put the upstream promtool binary \
on PATH / in ./prometheus-bin/ / set PROMTOOL=...)"
  command -v apt-get >/dev/null 2>&1 || die "promtool not found and apt-get unavailable; install promtool"
  echo "check-rules: promtool not found; installing Debian package 'prometheus' (for promtool)"
  local start=$SECONDS created_policy=""
  # Keep maintainer scripts from starting the server: a policy-rc.d that denies every start is the
  # standard mechanism (honoured by invoke-rc.d and deb-systemd-invoke). Only add one if absent.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  local rc=0 log
  log=$(mktemp)
  {
    apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
  } >"$log" 2>&1 || rc=$?
  if [[ -n "$created_policy" ]]; then rm -f /usr/sbin/policy-rc.d; fi
  stop_packaged_server
  if [[ $rc != 0 ]]; then
    cat "$log" >&2; rm -f "$log"
    die "apt-get install prometheus failed (exit $rc)"
  fi
  rm -f "$log"
  echo "check-rules: installed in $((SECONDS - start)) s"
}

# resolve_tool NAME OVERRIDE INSTALLER: the override variable's executable if set, else the tool
# found by find_tool, else whatever INSTALLER provides. Prints its path.
resolve_tool() {
  local name=$1 override=${!2:-} installer=$3 found
  if [[ -n "$override" ]]; then
    [[ -x "$override" ]] || die "$2=$override is not an executable"
    echo "$override"
  elif found=$(find_tool "$name"); then
    echo "$found"
  else
    "$installer" >&2
    find_tool "$name" || die "$name still missing after $installer"
  fi
}

PROMTOOL_BIN=$(resolve_tool promtool PROMTOOL install_promtool)
echo "check-rules: using $PROMTOOL_BIN ($("$PROMTOOL_BIN" --version 2>&1 | head -n1))"

[[ -f "$RULES" ]] || die "$RULES not found"
[[ -f "$TESTS" ]] || die "$TESTS not found"

echo "check-rules: promtool check rules $RULES"
"$PROMTOOL_BIN" check rules "$RULES" || die "promtool check rules $RULES failed"

echo "check-rules: promtool test rules $TESTS"
"$PROMTOOL_BIN" test rules "$TESTS" || die "promtool test rules $TESTS failed"

# amtool alone, unpacked from the package: the Alertmanager server is neither installed nor run.
unpack_amtool() {
  local start=$SECONDS work
  work=$(mktemp -d)
  echo "check-rules: amtool not found; unpacking it from Debian's prometheus-alertmanager package"
  if ! (cd "$work" && apt-get download -qq prometheus-alertmanager) >/dev/null 2>&1; then
    [[ "$(id -u)" == 0 ]] || { rm -rf "$work"; die "apt-get download prometheus-alertmanager failed; \
put amtool on PATH / in ./prometheus-bin/ or set AMTOOL=..."; }
    apt-get update -qq >/dev/null 2>&1 || true
    (cd "$work" && apt-get download -qq prometheus-alertmanager) >/dev/null 2>&1 \
      || { rm -rf "$work"; die "apt-get download prometheus-alertmanager failed"; }
  fi
  dpkg-deb -x "$work"/prometheus-alertmanager_*.deb "$work/root"
  mkdir -p prometheus-bin
  cp "$work/root/usr/bin/amtool" prometheus-bin/amtool
  rm -rf "$work"
  echo "check-rules: amtool unpacked in $((SECONDS - start)) s"
}

AMTOOL_BIN=$(resolve_tool amtool AMTOOL unpack_amtool)
[[ -f "$ALERTMANAGER" ]] || die "$ALERTMANAGER not found"

echo "check-rules: amtool check-config $ALERTMANAGER"
"$AMTOOL_BIN" check-config "$ALERTMANAGER" >/dev/null || die "amtool check-config $ALERTMANAGER failed"

# Every notify value the rules use reaches its own receiver (an unknown value would fall through
# to the default route: a page read in Slack).
declare -A RECEIVER=([page]=pagerduty-favorites [slack]=slack-favorites [deploy-pipeline]=deploy-pipeline)
used=$(grep -oE '^ +notify: [a-z-]+' "$RULES" | awk '{print $2}' | sort -u)
[[ -n "$used" ]] || die "no notify label in $RULES"
for notify in $used; do
  expected=${RECEIVER[$notify]:-}
  [[ -n "$expected" ]] || die "notify=$notify in $RULES has no receiver in this script's table"
  echo "check-rules: amtool config routes test notify=$notify -> $expected"
  "$AMTOOL_BIN" config routes test --config.file="$ALERTMANAGER" --verify.receivers="$expected" \
    "notify=$notify" alertname=FavoritesCheck namespace=shop job=favorites >/dev/null 2>&1 \
    || die "notify=$notify is not routed to $expected in $ALERTMANAGER"
done

echo "check-rules: OK"
