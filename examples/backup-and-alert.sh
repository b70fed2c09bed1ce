#!/usr/bin/env bash
# Run one hcbak job and act on its exit code (the contract in docs/exit-codes.md).
# Usage: backup-and-alert.sh JOB [ALERT-ADDRESS]
set -uo pipefail

job="${1:?usage: $0 JOB [ALERT-ADDRESS]}"
alert_to="${2:-root}"
log="$(mktemp -t hcbak-run.XXXXXX)"
trap 'rm -f "$log"' EXIT

alert() {  # subject; the run log is the body
    echo "hcbak $job: $1" >&2
    if command -v mail >/dev/null 2>&1; then
        mail -s "hcbak $job: $1" "$alert_to" <"$log"
    fi
}

hcbak job run "$job" --json >"$log.json" 2>"$log"
code=$?
cat "$log.json" >>"$log"
rm -f "$log.json"

case "$code" in
    0) echo "hcbak $job: ok" ;;
    1) alert "finished with warnings" ;;                     # e.g. a VM fell back to a full read
    2) alert "usage or config error: fix the config" ;;      # retrying will not help
    3) alert "PARTIAL: some VMs were not backed up" ;;        # the others have new points
    4) alert "FAILED: nothing was backed up" ;;               # cluster or repository unreachable
    5) echo "hcbak $job: busy (already running or repository locked); skipping" >&2 ;;
    6) alert "INTEGRITY ERROR in the repository: run hcbak repo verify" ;;
    130) echo "hcbak $job: interrupted" >&2 ;;
    *) alert "unexpected exit code $code" ;;
esac
exit "$code"
