#!/bin/sh
# Entrypoint of the queue-server image: runs the server (as PID 1, so `docker stop`'s
# SIGTERM reaches it and drains) on the config at $QUEUE_SERVER_CONFIG (default
# /etc/queue-server/config.toml), with control.api_key taken from the file named by
# QUEUE_SERVER_API_KEY_FILE (a mounted secret; preferred) or from QUEUE_SERVER_API_KEY.
# The key is handed to the server through a pipe (--config /dev/stdin): it is never
# written to disk. With no key, the config is used as it is (and the server refuses a
# non-loopback control address without one). Extra arguments go to queue-server.
set -eu

config=${QUEUE_SERVER_CONFIG:-/etc/queue-server/config.toml}
key=
if [ -n "${QUEUE_SERVER_API_KEY_FILE:-}" ]; then
    key=$(cat "$QUEUE_SERVER_API_KEY_FILE")
elif [ -n "${QUEUE_SERVER_API_KEY:-}" ]; then
    key=$QUEUE_SERVER_API_KEY
fi
unset QUEUE_SERVER_API_KEY

if [ -z "$key" ]; then
    exec queue-server --config "$config" "$@"
fi
# Only characters that need no escaping in a TOML string (base64, base64url, hex, ...).
case $key in
    *[!A-Za-z0-9._~+/=-]*)
        echo "entrypoint: the API key may hold only A-Z a-z 0-9 . _ ~ + / = -" >&2
        exit 64
        ;;
esac

# The config with `api_key = "<key>"` added as the first key of [control] (or a
# [control] table appended when the file has none). A file that already sets
# control.api_key is refused by the server (duplicate key): set the key one way only.
with_key() {
    QS_API_KEY=$key awk '
        { print }
        /^[ \t]*\[control\][ \t]*(#.*)?$/ { print "api_key = \"" ENVIRON["QS_API_KEY"] "\""; done = 1 }
        END { if (!done) { print "[control]"; print "api_key = \"" ENVIRON["QS_API_KEY"] "\"" } }
    ' "$config"
}
rendered=$(with_key)
exec queue-server --config /dev/stdin "$@" <<EOF_CONFIG
$rendered
EOF_CONFIG
