# Cross-compiles the C that Cython generated for a build of this tree (build/cython/src, the
# base level) for aarch64 with GCC: the NEON/generic path of every kernel module from the same
# sources (docs/benchmarks.md, third session). Needs Debian's gcc-aarch64-linux-gnu; run
# from the repository root after a build. Compiles and links only: nothing runs.
set -e
cd "${1:-.}"
PYINC=$(python -c "import sysconfig;print(sysconfig.get_paths()['include'])")
NPINC=$(python -c "import numpy;print(numpy.get_include())")
out=$(mktemp -d)
for c in build/cython/src/seqkern/*.c; do
  n=$(basename $c .c)
  aarch64-linux-gnu-gcc -O3 -fno-math-errno -fno-trapping-math -Wno-unused-function -fopenmp -fPIC -shared \
     -I$PYINC -I$NPINC -Isrc/seqkern -Ibuild/generated -DSEQKERN_LEVEL="\"generic\"" -DSEQKERN_CFLAGS="\"-O3\"" -DSEQKERN_BUILT_WITH_OPENMP=1 -DNPY_NO_DEPRECATED_API=NPY_1_7_API_VERSION $c -o $out/$n.so 2> $out/$n.err && echo "ok   $n" || { echo "FAIL $n"; head -20 $out/$n.err; }
done
file $out/*.so | head -3
for so in $out/*.so; do aarch64-linux-gnu-objdump -d $so | grep -c "fmla" | xargs echo "$(basename $so) fmla:"; done
