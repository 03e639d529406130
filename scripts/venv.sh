# Sourced by the scripts here. ensure_dev_venv creates .venv with everything the project and its
# tests need, pinned by constraints.txt; it reinstalls only when a pin or a pyproject.toml changed.
DEV_PACKAGES=(-e artifact -e trainer -e service pytest hypothesis ruff requests openapi-spec-validator "tritonclient[http]" playwright)

ensure_dev_venv() {
  local venv=.venv stamp=.venv/.installed want
  want="$(cat constraints.txt */pyproject.toml | sha256sum | cut -c1-16) ${DEV_PACKAGES[*]}"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return 0; fi
  echo "installing pinned dependencies into $venv ..." >&2
  [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints.txt "${DEV_PACKAGES[@]}"
  echo "$want" > "$stamp"
}
