#!/bin/sh
# The quickstart: serve an empty directory, put the samples, list, get one back,
# verify it, and stop the server. Needs `ftransfer` on PATH (see README).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir "$work/served"
mkfifo "$work/ready"
ftransfer serve --root "$work/served" --port 0 >"$work/ready" 2>"$work/server.log" &
server=$!
exec 3<"$work/ready"  # held open for the server's lifetime
if ! read -r ready <&3; then  # blocks until the ready line, or EOF if the server died
    cat "$work/server.log"
    exit 1
fi
echo "$ready"
port=$(echo "$ready" | sed -n 's|.*tcp://[^ ]*:\([0-9]*\).*|\1|p')
remote="127.0.0.1:$port"
set -x
ftransfer put "$here/hello.txt" "$here/utf8.txt" "$here/empty.txt" "$here/data.bin" "$remote/"
ftransfer mkdir "$remote/nested"
ftransfer put "$here/nested/readme.md" "$remote/nested/"
ftransfer ls "$remote"
ftransfer get "$remote/data.bin" "$work/data.bin"
cmp "$here/data.bin" "$work/data.bin"
ftransfer stat "$remote/data.bin"
ftransfer get "$remote/hello.txt" -
set +x
kill -TERM "$server"
wait "$server"
echo "demo: all transfers verified"
