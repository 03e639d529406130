# shellcheck shell=bash
# Sourced by the scripts that need a container engine (compose-e2e, chart-run), from the checkout root.

# Run ../shared/tools/containers/setup (idempotent), the Docker stand-in on machines without Docker.
# From /: the podman service it starts outlives the calling script, and its containers fail to start
# ("write child: broken pipe") once the working directory it inherited is deleted.
start_container_standin() {
  (containers=$PWD/../shared/tools/containers && cd / && "$containers/setup" >/dev/null)
}
