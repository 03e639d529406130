# shellcheck shell=bash
# Sourced by the scripts here; run the functions from the root of a checkout (they read its files).
# ensure_venv DIR PACKAGE... creates the virtual environment DIR if needed and installs PACKAGE...
# (pip arguments: names, -e DIR, ./DIR) pinned by constraints.txt (or the file $CONSTRAINTS names). It reinstalls only when
# constraints.txt, a */pyproject.toml or the package list changed: DIR/.installed holds a hash of
# those files and the list. ensure_dev_venv: .venv, with everything the project, its tests and the
# service benchmarks (bench/service) need. ensure_bench_venv: .bench-venv, bench/run's, with the
# trainer, PyTorch and scikit-learn (also the machine factor's yardstick for bench/service/run grpc).
DEV_PACKAGES=(-e artifact -e trainer -e service pytest pytest-xdist hypothesis ruff requests openapi-spec-validator "tritonclient[http,grpc]" grpcio-tools kserve playwright psutil schemathesis pytest-timeout "moto[server]" py-spy cloudevents)

ensure_venv() {
  local venv="$1" want constraints="${CONSTRAINTS:-constraints.txt}"
  shift
  want="$(cat "$constraints" ./*/pyproject.toml | sha256sum | cut -c1-16) $*"
  if [[ -f "$venv/.installed" && "$(cat "$venv/.installed")" == "$want" ]]; then return 0; fi
  echo "installing $* into $venv ($constraints) ..." >&2
  [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c "$constraints" "$@"
  echo "$want" > "$venv/.installed"
}

BENCH_PACKAGES=(-e artifact -e trainer torch scikit-learn psutil)

ensure_dev_venv() { ensure_venv .venv "${DEV_PACKAGES[@]}"; }
ensure_bench_venv() { ensure_venv .bench-venv "${BENCH_PACKAGES[@]}"; }

# direct_pins FILE: constraints.txt without the section scripts/lock writes, for the bench-only
# environments, which are not locked (their tools need other releases than the tests' pull in).
direct_pins() { sed '/^# pulled in by the pins above/,$d' constraints.txt > "$1"; }
