#!/usr/bin/env bash
# Debian packages the test suite needs, installed only when missing.
#   tmux: drives `parley chat` end to end in a terminal.
#   postgresql: the suite runs on PostgreSQL too (a throwaway cluster, started by the tests).
#   g++: builds llama-cpp-python once when its wheel is not cached yet.
#   chromium: the browser tests of the chat page (tests/web), driven by Playwright.
#   redis-server: a throwaway Redis per test (tests/support/redis.py) carries live streams between processes.
#   nginx: the load balancer in front of several parley processes (tests/support/nginx.py).
#   nodejs: runs the chat page's Markdown renderer in the timing tests (tests/web/node).
set -euo pipefail

need=()
command -v tmux >/dev/null 2>&1 || need+=(tmux)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
[ -x /usr/sbin/nginx ] || need+=(nginx)
command -v node >/dev/null 2>&1 || need+=(nodejs)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "installing Debian packages: ${need[*]}"
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1; then
  SUDO="sudo"
else
  echo "error: these packages are missing and this user cannot install them: ${need[*]}" >&2
  echo "       install them with your package manager (apt-get install ${need[*]}) and rerun" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
