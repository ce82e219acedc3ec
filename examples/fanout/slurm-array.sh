#!/bin/bash
# An example Slurm job array: a 2 x 2 grid of params, one task per grid point, each in a
# clone of its own. Each task runs `dvc exp run -S ... --name NAME`, then shares the
# result: `dvc exp push` (the experiment's Git ref to the Git server, its outputs to the
# DVC remote) and `dvc push --run-cache` (the stage runs, so that no machine reruns them).
#
# Needs: the baseline commit pushed to a Git server the nodes can push to, a DVC remote in
# its .dvc/config that the nodes can reach (see the README, "Sharing artifacts"), and a
# virtualenv with the project installed on a filesystem the nodes share. Submit from a
# clone whose HEAD is the baseline:
#
#   sbatch --export=ALL,REPO_URL="$(git remote get-url origin)",BASE="$(git rev-parse HEAD)",VENV="$PWD/.venv" examples/fanout/slurm-array.sh
#
# Then gather on any clone at BASE: dvc exp pull origin; dvc exp show (see the README).
#SBATCH --job-name=toy-sweep
#SBATCH --array=0-3
#SBATCH --cpus-per-task=2
#SBATCH --time=01:00:00
#SBATCH --output=toy-sweep-%A_%a.log
set -euo pipefail

: "${REPO_URL:?}" "${BASE:?}" "${VENV:?}"
EPOCHS=(50 200)
NOISE=(0.5 1.2)
task=${SLURM_ARRAY_TASK_ID}
epochs=${EPOCHS[task % 2]}
noise=${NOISE[task / 2]}
name="sweep-${SLURM_ARRAY_JOB_ID}-e${epochs}-n${noise}"   # unique per baseline commit: exp push skips a taken name

source "$VENV/bin/activate"
work="${TMPDIR:-/tmp}/$name"
rm -rf "$work"
trap 'rm -rf "$work"' EXIT
git clone --quiet "$REPO_URL" "$work"
cd "$work"
git checkout --quiet "$BASE"            # every task on the same baseline commit
git config user.name >/dev/null || git config user.name "$USER"   # dvc exp run commits
git config user.email >/dev/null || git config user.email "$USER@$(hostname)"

# --pull: outputs of unchanged stages (and run-cache hits) come from the DVC remote.
dvc exp run --pull --name "$name" \
  -S "train_toy.two_blops.epochs=$epochs" \
  -S "generate_toy.two_blops.noise=$noise" \
  evaluate@toy
dvc exp push origin "$name"             # Git ref + cached outputs (--no-cache: the ref only)
dvc push --run-cache                    # the run-cache entries as well
