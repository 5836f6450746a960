#!/bin/bash
# Builds seqkern for aarch64 (the portable 'generic' level: the NEON path of every kernel
# module, from the same sources) and runs its test suite there, under QEMU user-mode
# emulation on an x86-64 Debian 12 machine: a Debian bookworm arm64 chroot (Python 3.11,
# GCC 12) made with debootstrap, a venv with the PyPI aarch64 wheels of the dependencies,
# `python setup.py build_ext --inplace` run inside the chroot (the real build, compiled by
# the chroot's own GCC), then pytest inside the chroot.
#
# NOT part of CI: it needs root (debootstrap, chroot, mounts, binfmt_misc), network access
# (deb.debian.org, PyPI) and a long time, everything emulated: on a 2-core machine about
# 6 min for the chroot, 1 min for the wheels, 15-40 min for the build (one compiler at a
# time) and roughly 30-60 min for the whole suite (tests/test_contract.py alone: 12 min).
# What it gave under QEMU 7.2 (Debian 12), and the tests it made change: docs/benchmarks.md,
# "2026-12-07 (fifth session)".
#
# Usage: sudo docs/scripts/aarch64_qemu_tests.sh [WORKDIR [PYTEST ARGS...]]
#   run from the repository root; WORKDIR (default /var/tmp/seqkern-aarch64) holds the
#   rootfs; the committed tree (git archive HEAD) is what gets built and tested.
#   Heavy steps run under `nice -n 19`. Re-running reuses the rootfs and the venv.
set -euo pipefail
REPO=$(pwd)
WORK=${1:-/var/tmp/seqkern-aarch64}; shift || true
R=$WORK/rootfs
MIRROR=${MIRROR:-http://deb.debian.org/debian}

# 1. QEMU and binfmt_misc: the kernel runs aarch64 ELF files through qemu-aarch64-static.
apt-get install -y qemu-user-static binfmt-support debootstrap
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
update-binfmts --enable qemu-aarch64 || true
grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64

# 2. The arm64 chroot. The registered interpreter (binfmt-support's, without the F flag)
#    is looked up inside the chroot, so the static QEMU is copied to where it points.
if [ ! -x "$R/usr/bin/python3" ]; then
  mkdir -p "$WORK"
  nice -n 19 debootstrap --arch=arm64 --foreign \
      --include=python3,python3-venv,python3-dev,gcc,libgomp1 bookworm "$R" "$MIRROR"
  INTERP=$(sed -n 's/^interpreter //p' /proc/sys/fs/binfmt_misc/qemu-aarch64)
  mkdir -p "$R$(dirname "$INTERP")"
  cp /usr/bin/qemu-aarch64-static "$R/usr/bin/"
  cp /usr/bin/qemu-aarch64-static "$R$INTERP"
  nice -n 19 chroot "$R" /debootstrap/debootstrap --second-stage
fi
for d in proc sys dev; do mountpoint -q "$R/$d" || mount --bind "/$d" "$R/$d"; done
trap 'for d in dev sys proc; do umount "$R/$d" 2>/dev/null || true; done' EXIT
cp /etc/resolv.conf "$R/etc/resolv.conf"
# the host's CA bundle (a TLS-intercepting proxy's CA, where there is one) for pip
cp /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/ca-certificates-host.crt"
IN="chroot $R /usr/bin/env -i PATH=/opt/venv/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8
    PIP_CERT=/etc/ssl/certs/ca-certificates-host.crt PIP_DISABLE_PIP_VERSION_CHECK=1"

# 3. The venv: aarch64 wheels from PyPI (numpy, scipy, Cython ...; nothing compiled here).
[ -x "$R/opt/venv/bin/python" ] || $IN python3 -m venv /opt/venv
nice -n 19 $IN pip install -q numpy scipy threadpoolctl pytest pytest-benchmark hypothesis \
    "Cython>=3.1" "setuptools>=64"

# 4. The build: the committed tree, built in place by setup.py inside the chroot, portable
#    (SEQKERN_PORTABLE=1: the one 'generic' level on aarch64; -march=native would depend on
#    what QEMU reports as the CPU). One compiler process at a time.
rm -rf "$R/src/seqkern"; mkdir -p "$R/src/seqkern"
git -C "$REPO" archive HEAD | tar -x -C "$R/src/seqkern"
start=$(date +%s)
nice -n 19 $IN /bin/bash -c 'cd /src/seqkern && SEQKERN_PORTABLE=1 python setup.py build_ext --inplace' \
    > "$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s (log: $WORK/build.log)"
$IN /bin/bash -c 'cd /src/seqkern/src && python -c "import platform, seqkern; print(platform.machine()); seqkern.show_config()"'

# 5. The tests, on aarch64 (extra arguments go to pytest, e.g. tests/test_rnn.py -x).
start=$(date +%s)
set +e
nice -n 19 $IN /bin/bash -c "cd /src/seqkern && PYTHONPATH=src python -m pytest -q -p no:cacheprovider ${*:-tests/}" \
    2>&1 | tee "$WORK/pytest.log"
rc=${PIPESTATUS[0]}
echo "tests: $(( $(date +%s) - start )) s, exit status $rc (log: $WORK/pytest.log)"
exit $rc
