# SPDX-License-Identifier: Apache-2.0
# The project's virtual environment (.venv) with MLOS and its test tools, editable.
# curl: the MLOS REST tests drive the service with it, as its users do.
apt_install python3-venv python3-dev build-essential curl
PY="${MLOS_PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtual environment $VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip wheel
fi
# Reinstall only when pyproject.toml changed since the last install.
stamp="$VENV/.mlos-installed"
if [ ! -f "$stamp" ] || [ "$REPO_ROOT/pyproject.toml" -nt "$stamp" ]; then
    log "installing MLOS and test dependencies into $VENV"
    "$VENV/bin/pip" install -q -e "$REPO_ROOT[test]" || die "pip install failed" "see the pip output above"
    touch "$stamp"
fi
