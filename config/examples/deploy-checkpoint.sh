#!/usr/bin/env bash
# Deploys a Baseten Loops sampler checkpoint that loopwatch reports complete.
# Run by the exec sink of config/examples/exec-deploy.toml; by hand, for a test:
#
#   LOOPWATCH_EVENT_ID=evt_test LOOPWATCH_EVENT_TYPE=checkpoint.completed \
#   LOOPWATCH_CHECKPOINT_ID=<id> LOOPWATCH_CHECKPOINT_URI=bt://loops:<run>/sampler_weights/<name> \
#   deploy-checkpoint.sh < /dev/null
#
# Exit 0 = done (loopwatch marks the delivery delivered); non-zero = loopwatch retries.
# Deliveries are at least once: the checkpoint's id is recorded in DEPLOY_STATE_DIR after
# a successful deploy, and a repeated event for it is acknowledged without deploying again.
# Messages go to stderr: loopwatch shows the end of it when the script fails.
set -euo pipefail

: "${LOOPWATCH_EVENT_ID:?not set: run me from a loopwatch exec sink}"
: "${LOOPWATCH_EVENT_TYPE:?not set}"
: "${LOOPWATCH_CHECKPOINT_ID:?not set}"
: "${LOOPWATCH_CHECKPOINT_URI:?not set}"
state_dir=${DEPLOY_STATE_DIR:-/var/lib/loopwatch/deployed}
event=$(cat)   # the standard body, kept beside the marker for the record

log() { echo "deploy-checkpoint: $*" >&2; }

if [[ $LOOPWATCH_EVENT_TYPE != checkpoint.completed ]]; then
    log "ignoring $LOOPWATCH_EVENT_TYPE ($LOOPWATCH_EVENT_ID)"
    exit 0
fi
if [[ $LOOPWATCH_CHECKPOINT_URI != */sampler_weights/* ]]; then
    log "not a sampler checkpoint, not deployable: $LOOPWATCH_CHECKPOINT_URI"
    exit 0
fi
if [[ ! $LOOPWATCH_CHECKPOINT_ID =~ ^[A-Za-z0-9._-]+$ ]]; then
    log "refusing an unexpected checkpoint id: $LOOPWATCH_CHECKPOINT_ID"
    exit 1
fi

mkdir -p "$state_dir"
marker=$state_dir/$LOOPWATCH_CHECKPOINT_ID.json
if [[ -e $marker ]]; then
    log "already deployed: $LOOPWATCH_CHECKPOINT_URI ($LOOPWATCH_CHECKPOINT_ID)"
    exit 0
fi

log "deploying $LOOPWATCH_CHECKPOINT_URI ($LOOPWATCH_CHECKPOINT_ID), event $LOOPWATCH_EVENT_ID"
baseten loops checkpoint deploy --checkpoint-id "$LOOPWATCH_CHECKPOINT_ID" >&2
printf '%s\n' "$event" > "$marker.tmp" && mv "$marker.tmp" "$marker"
log "deployed $LOOPWATCH_CHECKPOINT_ID"
