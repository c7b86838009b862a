#!/usr/bin/env bash
# install-locked.sh LOCK EXTRAS: install the project from /src into /opt/venv
# with exactly the versions of the lock file, then prove it: every installed
# distribution must be pinned in LOCK at that version, so an extra that is not
# locked fails the build instead of pulling whatever is newest today.
#
#   install-locked.sh constraints.txt     cpu,celery    # the CPU image (TensorFlow for CPU)
#   install-locked.sh constraints-gpu.txt gpu,celery    # the GPU image (TensorFlow with CUDA)
#
# Exactly one of the extras cpu or gpu: both provide the `tensorflow` module.
set -euo pipefail

lock="${1:?usage: install-locked.sh LOCK EXTRAS}"
extras="${2:?usage: install-locked.sh LOCK EXTRAS}"
python="${VENV_PYTHON:-/opt/venv/bin/python}"
src="${PROJECT_SRC:-/src}"

has_cpu=0; has_gpu=0
case ",${extras}," in *,cpu,*) has_cpu=1 ;; esac
case ",${extras}," in *,gpu,*) has_gpu=1 ;; esac
if [ "$has_cpu$has_gpu" = 11 ]; then
    echo "install-locked: the extras cpu and gpu exclude each other" >&2; exit 2
elif [ "$has_cpu$has_gpu" = 00 ]; then
    echo "install-locked: name the TensorFlow variant, extra cpu or gpu (got: ${extras})" >&2; exit 2
fi

# Bytecode compiled now, as pip would: the image sets PYTHONDONTWRITEBYTECODE, so without it every task
# process would compile Airflow's, TensorFlow's and Keras' sources again (seconds per task).
uv pip install --python "$python" --compile-bytecode -c "$lock" "${src}[${extras}]"
uv pip check --python "$python"
uv pip freeze --python "$python" | grep -v '^review-moderation' | tr 'A-Z_' 'a-z-' | sort > /tmp/installed.txt
grep -vE '^[[:space:]]*(#|$)' "$lock" | tr 'A-Z_' 'a-z-' | sort > /tmp/locked.txt
comm -23 /tmp/installed.txt /tmp/locked.txt > /tmp/unlocked.txt
if [ -s /tmp/unlocked.txt ]; then
    echo "installed but not pinned by ${lock} (regenerate the lock):" >&2
    cat /tmp/unlocked.txt >&2
    exit 1
fi
