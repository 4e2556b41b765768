# Shared by clients/generate and clients/test (sourced, not run). Installs the
# pinned tools on demand, into places git ignores:
#   target/tools/clients-venv        Python venv from clients/python/requirements-dev.txt
#   clients/typescript/node_modules  npm ci from clients/typescript/package-lock.json
# Each is reinstalled only when its pin file changes (a stamp holds its hash).

CLIENTS_VENV="target/tools/clients-venv"

# Installs a Debian package when a command is missing (as .ci/buf does).
clients_apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing $* from Debian's packages" >&2
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "$@" >/dev/null
}

clients_hash() {
  sha256sum "$@" | sha256sum | cut -d' ' -f1
}

# Creates or refreshes the venv; prints nothing, sets CLIENTS_PY.
clients_python_env() {
  local req="clients/python/requirements-dev.txt"
  local stamp="$CLIENTS_VENV/.roster-stamp"
  command -v python3 >/dev/null 2>&1 || clients_apt_install python3 python3-venv
  local want
  want="$(clients_hash "$req")-$(python3 -c 'import sys; print(sys.version.split()[0])')"
  if [ ! -x "$CLIENTS_VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setting up $CLIENTS_VENV from $req" >&2
    rm -rf "$CLIENTS_VENV"
    mkdir -p "$(dirname "$CLIENTS_VENV")"
    if ! python3 -m venv "$CLIENTS_VENV" >/dev/null 2>&1; then
      rm -rf "$CLIENTS_VENV"
      clients_apt_install python3-venv
      python3 -m venv "$CLIENTS_VENV"
    fi
    nice -n 10 "$CLIENTS_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
    echo "$want" >"$stamp"
  fi
  CLIENTS_PY="$CLIENTS_VENV/bin/python"
}

# Runs npm ci in clients/typescript when node_modules is missing or stale.
clients_node_env() {
  local dir="clients/typescript"
  local stamp="$dir/node_modules/.roster-stamp"
  if ! command -v npm >/dev/null 2>&1; then
    clients_apt_install nodejs npm
  fi
  local want
  want="$(clients_hash "$dir/package.json" "$dir/package-lock.json")-$(node --version)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing $dir/node_modules (npm ci)" >&2
    (cd "$dir" && nice -n 10 npm ci --silent --no-audit --no-fund >&2)
    echo "$want" >"$stamp"
  fi
}
