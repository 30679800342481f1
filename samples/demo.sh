#!/bin/sh
# The quickstart: add a user, serve an empty directory to it over TLS, put the
# samples, list, get one back, verify it, and stop the server. Needs `ftransfer`
# on PATH (see README).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
# The server's key and the client's known_hosts go to the demo's directory, not
# to ~/.local/state/ftransfer and ~/.config/ftransfer as they would otherwise.
export XDG_STATE_HOME="$work/state" XDG_CONFIG_HOME="$work/config"
mkdir "$work/served"
echo "demo-password" | ftransfer user add demo --users "$work/users" --password-stdin
mkfifo "$work/ready"
ftransfer serve --root "$work/served" --port 0 --users "$work/users" \
    >"$work/ready" 2>"$work/server.log" &
server=$!
exec 3<"$work/ready"  # held open for the server's lifetime
if ! read -r ready <&3; then  # blocks until the ready line, or EOF if the server died
    cat "$work/server.log"
    exit 1
fi
echo "$ready"
port=$(echo "$ready" | sed -n 's|.*tcp://[^ ]*:\([0-9]*\).*|\1|p')
remote="demo@127.0.0.1:$port"
export FTRANSFER_PASSWORD="demo-password"  # (else --password-file, or a prompt)
set -x
ftransfer put "$here/hello.txt" "$here/utf8.txt" "$here/empty.txt" "$here/data.bin" "$remote/"
ftransfer mkdir "$remote/nested"
ftransfer put "$here/nested/readme.md" "$remote/nested/"
ftransfer ls "$remote"
ftransfer get "$remote/data.bin" "$work/data.bin"
ftransfer get --udp "$remote/data.bin" "$work/data-udp.bin"  # sealed UDP, keys over TLS
cmp "$here/data.bin" "$work/data-udp.bin"
cmp "$here/data.bin" "$work/data.bin"
ftransfer stat "$remote/data.bin"
ftransfer get "$remote/hello.txt" -
set +x
kill -TERM "$server"
wait "$server"
echo "demo: all transfers verified"
