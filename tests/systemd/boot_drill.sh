#!/usr/bin/env bash
# The unit for real: boot systemd in a container over a throw-away copy of this machine,
# install coldgate there with the README's own commands, and check what the unit does.
#
# Not part of the suite (it needs root, systemd-nspawn, a few minutes and PyPI for the
# venv): run it by hand, as root, from the checkout: tests/systemd/boot_drill.sh
# The host is not changed: the container's root is an overlay whose writes go to a tmpfs,
# mosquitto/postgresql are masked in it and it has its own network namespace.
#
# Checks: the service starts and runs under its real sandbox; `sudo -u coldgate coldgate
# status` works; `systemctl reload` applies the config; an invalid config exits 78 and is
# not restarted; `systemd-analyze security coldgate` (online); the notify protocol: the
# unit is active only after READY=1, shows the agent's STATUS= line, and is still running
# unrestarted past WatchdogSec (so WATCHDOG=1 kept coming). DROP_IN=1 runs it as
# Type=exec without the watchdog instead (for a runtime that does not notify).
set -euo pipefail
cd "$(dirname "$0")/../.."
CHECKOUT=$PWD
WORK=$(mktemp -d /tmp/coldgate-drill.XXXXXX)
ROOT=$WORK/root
NSPAWN_PID=
cleanup() {
    if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        in_ct systemctl poweroff || kill "$NSPAWN_PID"
        for _ in $(seq 30); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 1; done
    fi
    umount "$ROOT" 2>/dev/null || true
    umount "$WORK/t" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
in_ct() { nsenter -t "$(pgrep -P "$NSPAWN_PID" | head -1)" -a "$@"; }

command -v systemd-nspawn >/dev/null || apt-get install -y -q --no-install-recommends systemd-container
mkdir -p "$WORK/t" "$ROOT"
mount -t tmpfs -o size=3G tmpfs "$WORK/t"
mkdir -p "$WORK/t/up" "$WORK/t/work"
mount -t overlay overlay -o "lowerdir=/,upperdir=$WORK/t/up,workdir=$WORK/t/work" "$ROOT"
for unit in mosquitto postgresql; do ln -sf /dev/null "$ROOT/etc/systemd/system/$unit.service"; done

# The README's install block, as written (sudo -u becomes runuser; systemctl waits for the boot).
python3 - "$CHECKOUT/README.md" > "$ROOT/opt/install.sh" <<'EOF'
import re, sys
section = open(sys.argv[1]).read().split("## Running as a service", 1)[1]
block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
print('set -ex\nsudo() { if [ "$1" = -u ]; then u=$2; shift 2; runuser -u "$u" -- "$@"; else "$@"; fi; }')
print(f"cd {sys.argv[1].rsplit('/', 1)[0]}\nexport TOKEN=drill-token")
for line in block.splitlines():
    s = line.strip()
    if s and not s.startswith("#") and "systemctl" not in s and "journalctl" not in s:
        print(s)
print("systemctl enable coldgate")
EOF
systemd-nspawn --register=no --keep-unit --quiet -D "$ROOT" /bin/bash /opt/install.sh
if [ "${DROP_IN:-0}" = 1 ]; then
    mkdir -p "$ROOT/etc/systemd/system/coldgate.service.d"
    printf '[Service]\nType=exec\nWatchdogSec=0\n' > "$ROOT/etc/systemd/system/coldgate.service.d/drill.conf"
fi

setsid systemd-nspawn --register=no --keep-unit --private-network -D "$ROOT" -b > "$WORK/boot.log" 2>&1 &
NSPAWN_PID=$!
for _ in $(seq 60); do
    state=$(in_ct systemctl is-active coldgate 2>/dev/null || true)
    [ "$state" = active ] && break
    sleep 1
done
in_ct systemctl status coldgate --no-pager | head -12
[ "$(in_ct systemctl is-active coldgate)" = active ] || { echo "FAIL: not active"; exit 1; }
in_ct runuser -u coldgate -- coldgate status
in_ct systemctl reload coldgate
in_ct systemd-analyze security coldgate --no-pager | tail -1
if [ "${DROP_IN:-0}" != 1 ]; then
    in_ct systemctl show coldgate -p Type -p StatusText -p WatchdogUSec --no-pager
    [ "$(in_ct systemctl show coldgate -p Type --value)" = notify ] || { echo "FAIL: not Type=notify"; exit 1; }
    [ -n "$(in_ct systemctl show coldgate -p StatusText --value)" ] || { echo "FAIL: no STATUS="; exit 1; }
    wd=$(( $(in_ct systemctl show coldgate -p WatchdogUSec --value | sed 's/s$//') + 5 ))
    echo "waiting ${wd} s, past WatchdogSec"
    sleep "$wd"
    in_ct systemctl show coldgate -p ActiveState -p NRestarts --no-pager
    [ "$(in_ct systemctl is-active coldgate)" = active ] || { echo "FAIL: not active past the watchdog"; exit 1; }
    [ "$(in_ct systemctl show coldgate -p NRestarts --value)" = 0 ] || { echo "FAIL: restarted by the watchdog"; exit 1; }
fi

in_ct sh -c 'printf "gateway_id = \"gw\"\n[store]\nquota_mb = 1e308\n" > /etc/coldgate/coldgate.toml'
in_ct systemctl restart coldgate || true
sleep 12
in_ct systemctl show coldgate -p ActiveState -p NRestarts -p ExecMainStatus --no-pager
[ "$(in_ct systemctl show coldgate -p ExecMainStatus --value)" = 78 ] || { echo "FAIL: not 78"; exit 1; }
[ "$(in_ct systemctl show coldgate -p NRestarts --value)" = 0 ] || { echo "FAIL: restarted"; exit 1; }
echo "drill passed"
