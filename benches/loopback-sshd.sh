#!/usr/bin/env bash
# A throwaway OpenSSH server on 127.0.0.1, for benchmarks that compare against scp and rsync on the
# same machine in the same run (`benches/transfer.rs`). It runs as the current user, from DIR only:
# a fresh host key, a fresh client key that is its only authorized key, no password login.
#
#   benches/loopback-sshd.sh start DIR   # DIR: a new or empty scratch directory; prints the port
#   ssh -F DIR/ssh_config bench CMD      # host alias `bench`; also for scp -F and rsync -e
#   benches/loopback-sshd.sh stop DIR    # stops that sshd (and only it)
#
# Needs sshd, ssh and ssh-keygen (Debian: apt-get install openssh-server). Exits 1 with one line on
# stderr saying what is missing or what failed; the server log is DIR/sshd.log.
set -euo pipefail

usage() {
    echo "usage: $0 start DIR | stop DIR" >&2
    exit 2
}
[ $# -eq 2 ] || usage
cmd=$1
dir=$2

case $cmd in
stop)
    if [ -f "$dir/sshd.pid" ]; then
        pid=$(cat "$dir/sshd.pid")
        kill "$pid" 2>/dev/null || true
        rm -f "$dir/sshd.pid"
    fi
    exit 0
    ;;
start) ;;
*) usage ;;
esac

sshd=$(command -v sshd || true)
[ -n "$sshd" ] || { [ -x /usr/sbin/sshd ] && sshd=/usr/sbin/sshd; } || true
for tool in "$sshd" ssh ssh-keygen; do
    if [ -z "$tool" ] || ! command -v "$tool" >/dev/null; then
        echo "loopback-sshd: ${tool:-sshd} not found (Debian: apt-get install openssh-server openssh-client)" >&2
        exit 1
    fi
done

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
chmod 700 "$dir"
rm -f "$dir/hostkey" "$dir/hostkey.pub" "$dir/id" "$dir/id.pub"
ssh-keygen -q -t ed25519 -N '' -C bench-host -f "$dir/hostkey" >/dev/null
ssh-keygen -q -t ed25519 -N '' -C bench-client -f "$dir/id" >/dev/null
cp "$dir/id.pub" "$dir/authorized_keys"
chmod 600 "$dir/authorized_keys"
# sshd as root insists on its privilege separation directory.
if [ "$(id -u)" -eq 0 ]; then mkdir -p /run/sshd; fi

user=$(id -un)
# No free-port helper in plain bash: try random high ports until sshd binds one (it exits at once
# when the port is taken) and answers.
for _ in $(seq 20); do
    port=$((20000 + RANDOM % 40000))
    cat >"$dir/sshd_config" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey $dir/hostkey
PidFile none
AuthorizedKeysFile $dir/authorized_keys
AllowUsers $user
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
LogLevel ERROR
EOF
    echo "[127.0.0.1]:$port $(cat "$dir/hostkey.pub")" >"$dir/known_hosts"
    cat >"$dir/ssh_config" <<EOF
Host bench
  HostName 127.0.0.1
  Port $port
  User $user
  IdentityFile $dir/id
  IdentitiesOnly yes
  UserKnownHostsFile $dir/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  LogLevel ERROR
EOF
    "$sshd" -D -e -f "$dir/sshd_config" >"$dir/sshd.log" 2>&1 </dev/null &
    pid=$!
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        if ssh -F "$dir/ssh_config" bench true </dev/null 2>/dev/null; then
            echo "$pid" >"$dir/sshd.pid"
            echo "$port"
            exit 0
        fi
        sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
done
echo "loopback-sshd: could not start sshd on 127.0.0.1 (see $dir/sshd.log)" >&2
exit 1
