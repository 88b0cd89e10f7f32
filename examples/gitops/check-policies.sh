#!/bin/sh
# What a pipeline runs on a change to policies/: every call fixture in
# calls/, as the caller named next to it, must get the decision named next
# to it, by the same evaluation as the gateway. Exits non-zero naming each
# fixture whose decision differs. Needs the plugin on PATH (`kubectl-airlock`
# is what `kubectl airlock` runs).
set -u
cd "$(dirname "$0")"

engineers=e0e0e0e0-0000-4000-8000-00000000000e
nobody=00000000-0000-4000-8000-000000000000

failed=0
while read -r fixture groups expected; do
  case "$fixture" in ''|'#'*) continue ;; esac
  kubectl-airlock policy test -f policies/ --call "calls/$fixture.json" --as-groups "$groups" > /dev/null
  case $? in
    0) got=Allow ;;
    2) got=Deny ;;
    3) got=RequireApproval ;;
    *) got=error ;;
  esac
  if [ "$got" != "$expected" ]; then
    echo "calls/$fixture.json as $groups: expected $expected, got $got"
    failed=1
  fi
done <<CASES
# fixture               caller's groups  decision
get-status              $engineers       Allow
get-status              $nobody          Deny
deploy-to-staging       $engineers       Allow
deploy-to-production    $engineers       RequireApproval
change-replicas         $engineers       RequireApproval
read-staging-secret     $engineers       RequireApproval
read-production-secret  $engineers       Deny
CASES
exit $failed
