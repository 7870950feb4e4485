#!/usr/bin/env bash
# Prepare what a GPU run needs that the H200 machine (Python 3.12, no network) lacks, in folders git
# ignores, for the device tool to carry (carry: [".whl", ".benchdata"]):
#   .whl/        wheels of fm9g's dependencies missing there (jsonschema, tensorboardX, orjson, PyYAML),
#                OpenDelta 0.3.2 and what `import opendelta` loads, Liger Kernel 0.8.5 (Triton is
#                there with torch), torchao 0.17.0 (model.fp8, adamw_8bit; the release built against
#                torch 2.11, the GPU machine's), and the BMTrain 1.0.1 sdist
#                (tests/gpu/run.sh installs the wheels and builds BMTrain with `fm9g install-bmtrain`);
#   .benchdata/  the make_corpus `small` corpus (pretrain.txt too: benchmarks/search_bench.py indexes it)
#                for benchmarks/train_bench.py and search_bench.py (wordfreq is not there).
# Then, on the device: OUT=$OUT bash tests/gpu/run.sh   (BENCH_ARGS="--work .benchdata ..." for the benchmark).
set -euo pipefail
cd "$(dirname "$0")/.."
for folder in /.whl/ /.benchdata/; do
  grep -qx "$folder" .git/info/exclude 2>/dev/null || echo "$folder" >> .git/info/exclude
done
mkdir -p .whl
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  jsonschema==4.26.0 jsonschema-specifications referencing rpds-py tensorboardX==2.6.5 orjson \
  opendelta==0.3.2 web.py cheroot jaraco.functools more-itertools multipart liger-kernel==0.8.5 pyyaml \
  torchao==0.17.0
python -m pip download -q --no-deps --no-binary :all: --no-build-isolation bmtrain==1.0.1 -d .whl
if [ ! -f .benchdata/corpus-small/pretrain.txt ]; then
  shared="${FM9G_MAKE_CORPUS_DIR:-$(cd .. && pwd)/shared/bench}"
  python -c "import sys; from pathlib import Path; sys.path.insert(0, '$shared'); from make_corpus import generate; generate(Path('.benchdata/corpus-small'), scale='small', seed=0)"
fi
du -sh .whl .benchdata
