#!/bin/sh
# Installs HAProxy (and strace, for counting syscalls when profiling) so `deno task bench:e2e`
# can compare foo-proxy with it. Debian/Ubuntu, as root.
set -eu
apt-get update && apt-get install -y haproxy strace
