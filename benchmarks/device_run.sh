#!/usr/bin/env bash
# One call on the GPU machine: build the extension for sm_90, then run the named stages.
#   bash benchmarks/device_run.sh verify rwspectrum half radix3 radix3gk pdl realwindow fourstep3 fourstepbf16 tests mma mmabreak lmmma fourstep convtests clustertests clustervariants gradktests updatetests othertests genprofile lmprofile lmcompile lmgraphs lmcpp windows decodebench decodencu stamps contextuse gencontrol breakdown checks clustercheck fourstepcheck sanitize segv ncu opsfft opscl ops conv lm lmvariants traincompile gen quality alltests ddp
# Each stage's log and tables go to $OUT (the device tool returns that folder).
set -uo pipefail
export PYTHONUNBUFFERED=1 FFT_TENSOR_SKIP_STALE_CHECK=0
OUT=${OUT:-/tmp/fft_tensor_out}; mkdir -p "$OUT"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
start=$(date +%s)
# A module built for sm_90 on the CPU machine from these sources and carried here (benchmarks/prebuilt_ok.py
# says how, and checks torch version, sources and architecture) saves the build's four minutes.
# The same module gzipped in .carry/ (15 MB instead of 23.5: room beside NVIDIA's 47 MB of wheels in the
# tool's 64 MiB carry): unpacked first.
if [ -f .carry/_C.abi3.so.gz ] && [ -f .carry/_build_info.py ]; then
  gunzip -c .carry/_C.abi3.so.gz > fft_tensor/_C.abi3.so && cp .carry/_build_info.py fft_tensor/_build_info.py
fi
if "$PY" benchmarks/prebuilt_ok.py; then
  :
elif ! MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 FFT_TENSOR_CUDA=1 "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
  grep -E "error|Error" "$OUT/build.log" | head -40; exit 1
fi
echo "build: $(( $(date +%s) - start )) s"
# conv_variant NAME [ENV=VALUE ...] -- [bench args]: bench_causal_conv.py under the given switches,
# its log and table kept as bench_causal_conv_NAME.{log,md}.
conv_variant() {
  local name=$1 envs=(); shift
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do envs+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  env "${envs[@]}" "$PY" benchmarks/bench_causal_conv.py "$@" 2>&1 | tee "$OUT/bench_causal_conv_$name.log" | tail -45
  local rc=${PIPESTATUS[0]}
  [ -f "$OUT/bench_causal_conv.md" ] && mv "$OUT/bench_causal_conv.md" "$OUT/bench_causal_conv_$name.md"
  return $rc
}
# quick_sanitizers NAME [ENV=VALUE ...]: memcheck, racecheck and synccheck side by side on
# sanitize_cuda.py --quick under the given switches (logs sanitize_NAME_TOOL.log), then their summaries;
# any other sanitizer job the stage started in the background is waited for too.
quick_sanitizers() {
  local name=$1; shift
  for tool in memcheck racecheck synccheck; do
    env "$@" timeout 150 compute-sanitizer --tool $tool --error-exitcode 9 "$PY" benchmarks/sanitize_cuda.py --quick \
      > "$OUT/sanitize_${name}_$tool.log" 2>&1 &
  done
  wait
  grep -hE "ERROR SUMMARY|RACECHECK SUMMARY|SYNCCHECK|FAIL|ALL OK|Error|Traceback" "$OUT"/sanitize_${name}_*.log | head -12
}
status=0
for stage in "$@"; do
  t0=$(date +%s)
  case $stage in
    # pytest-xdist: a worker that crashes is reported and replaced instead of ending the run.
    tests)   "$PY" -m pytest -q -n 8 -p no:cacheprovider tests/test_phase_rotate.py tests/test_causal_conv.py 2>&1 | tee "$OUT/tests_ops.log" | tail -15 ;;
    checks)  "$PY" -m pytest -q -p no:cacheprovider tests/test_phase_rotate.py tests/test_causal_conv.py -k bad_inputs 2>&1 \
               | tee "$OUT/tests_checks.log" | tail -5 ;;
    clustertests) "$PY" -m pytest -q -n 16 -p no:cacheprovider tests/test_causal_conv.py -k "cuda and cluster" 2>&1 | tee "$OUT/tests_cluster.log" | tail -8 ;;
    # The four-step path (one-window FFTs over 16K points through a global workspace): its tests, then
    # Lk = L at 16K and 64K with it (default) and without it (the cluster kernels). FOURSTEP_MB: also
    # with that workspace size.
    fourstep) "$PY" -m pytest -q -n 8 -p no:cacheprovider tests/test_causal_conv.py -k "fourstep or peak_memory" 2>&1 \
               | tee "$OUT/tests_fourstep.log" | tail -15
             for v in 1 0 ${FOURSTEP_MB:+mb}; do
               envs=(FFT_TENSOR_CONV_FOURSTEP=${v/mb/1}); [ $v = mb ] && envs+=(FFT_TENSOR_CONV_FOURSTEP_MB=$FOURSTEP_MB)
               conv_variant "fourstep$v" "${envs[@]}" -- --kernels L --lengths ${FOURSTEP_LENGTHS:-16384,65536} --no-peer
             done ;;
    # The four-step path on 3 x 2^m points (FFT_TENSOR_CONV_FOURSTEP3, default) against the power-of-two
    # size, Lk = L where L + L - 1 fits 3/4 of the window, CUDA graphs.
    fourstep3) for v in 1 0; do
               conv_variant "fourstep3_$v" FFT_TENSOR_CONV_FOURSTEP3=$v -- --kernels L \
                 --lengths ${FOURSTEP3_LENGTHS:-20000,24576,40000} --no-peer --no-sdpa --graphs
             done ;;
    # The four-step path's bfloat16 workspace (FFT_TENSOR_CONV_FOURSTEP_BF16, default) against float2
    # (its tests: verify): bf16 Lk = L with it (NVIDIA's op beside it where PEER_ARGS names the wheels,
    # e.g. '--install-wheels .whl') and without it, CUDA graphs.
    fourstepbf16) conv_variant fourstep_bf16_1 FFT_TENSOR_CONV_FOURSTEP_BF16=1 -- --kernels L --dtypes bf16 \
               --lengths ${FOURSTEP_BF16_LENGTHS:-20000,24576,40000,65536} --no-sdpa --graphs ${PEER_ARGS:---no-peer}
             conv_variant fourstep_bf16_0 FFT_TENSOR_CONV_FOURSTEP_BF16=0 -- --kernels L --dtypes bf16 \
               --lengths ${FOURSTEP_BF16_LENGTHS:-20000,24576,40000,65536} --no-sdpa --graphs --no-peer ;;
    convtests) "$PY" -m pytest -q -n 16 -p no:cacheprovider tests/test_causal_conv.py -k cuda 2>&1 | tee "$OUT/tests_conv_cuda.log" | tail -15 ;;
    # One call's worth of checking after a kernel change: every CUDA causal_conv test with memcheck,
    # racecheck and synccheck on sanitize_cuda.py --quick beside it (about the tests' 250 s).
    verify)  quick_sanitizers verify &
             "$PY" -m pytest -q -n 13 -p no:cacheprovider tests/test_causal_conv.py -k cuda 2>&1 | tee "$OUT/tests_conv_cuda.log" | tail -6
             wait ;;
    # bf16 with 128 taps: the tensor-core direct kernels (default) against the FFT windows
    # (FFT_TENSOR_CONV_MMA=0), after the mma tests.
    mma)     "$PY" -m pytest -q -n 8 -p no:cacheprovider tests/test_causal_conv.py -k mma 2>&1 | tee "$OUT/tests_mma.log" | tail -8
             for v in ${MMA_VARIANTS:-1 0}; do conv_variant mma$v FFT_TENSOR_CONV_MMA=$v -- --kernels 128 --dtypes bf16 --no-peer; done ;;
    # Kernel times of bf16 128-tap convs (the ANCHORS.md shapes and the LM's B=32 D=512 at 1K), mma on and off.
    mmabreak) for v in ${MMA_VARIANTS:-1 0}; do
               FFT_TENSOR_CONV_MMA=$v "$PY" benchmarks/profile_causal_conv.py --breakdown --dtype bf16 --shapes 1024:128,4096:128,16384:128
               FFT_TENSOR_CONV_MMA=$v "$PY" benchmarks/profile_causal_conv.py --breakdown --dtype bf16 --shapes 1024:128 --batch 32 --dim 512
             done 2>&1 | tee "$OUT/breakdown_mma.txt" | grep -E "^##|events|conv_mma|conv_window|grad_k|spectrum|reduce" | head -120 ;;
    # The LM with the conv's mma kernels off (spectral family only) and on (both families), LM_ARGS as for lm.
    lmmma)   for v in 0 1; do
               fams=spectral; [ $v = 1 ] && fams=spectral,gpt
               FFT_TENSOR_CONV_MMA=$v "$PY" benchmarks/bench_lm_throughput.py --families $fams ${LM_ARGS:-} 2>&1 \
                 | tee "$OUT/bench_lm_mma$v.log" | grep -E "L=|rror|Command|x\)" | head -12
               [ -f "$OUT/bench_lm_throughput.md" ] && mv "$OUT/bench_lm_throughput.md" "$OUT/bench_lm_mma$v.md"
             done ;;
    # The same Lk=128 shapes with the direct kernels off (FFT overlap-save windows), for comparison.
    opsfft)  conv_variant fftwindows FFT_TENSOR_CONV_DIRECT_MAX_TAPS=0 -- --kernels 128 --no-peer ;;
    gentests) "$PY" -m pytest -q -n 6 -p no:cacheprovider tests/test_generate.py tests/test_chunk_decode.py tests/test_causal_conv.py::test_cuda_peak_memory \
               tests/test_causal_conv.py::test_cuda_cluster_path_taken tests/test_causal_conv.py::test_cuda_cluster_sizes 2>&1 \
               | tee "$OUT/tests_gen.log" | grep -E "passed|failed|FAILED|Error|assert" | head -30 ;;
    # u as a transposed (B, L, D) tensor, 128 taps: the plain direct kernel (layout copy first) against
    # the tiled one that reads it in place (FFT_TENSOR_CONV_CHANNELS_LAST=1).
    opscl)   for cl in 0 1; do
               conv_variant cl$cl FFT_TENSOR_CONV_CHANNELS_LAST=$cl -- --channels-last --kernels 128 --no-peer
             done ;;
    # every other CUDA test: causal_conv_update, rms_norm, phase_rotate, the models and the training loop
    othertests) "$PY" -m pytest -q -n 8 -p no:cacheprovider tests -k cuda --ignore=tests/test_causal_conv.py \
               --ignore=tests/test_generate.py --ignore=tests/test_chunk_decode.py 2>&1 | tee "$OUT/tests_other_cuda.log" | tail -12 ;;
    alltests) "$PY" -m pytest -q -n 8 -p no:cacheprovider tests 2>&1 | tee "$OUT/tests_all.log" | tail -25 ;;
    # Two GPUs (the device tool's nvidia-h100-x2): DDP over NCCL. The ranks-stay-identical test, then a
    # short torchrun of the hybrid preset on the Jargon File (carry .data/): its log and metrics.
    ddp)     "$PY" -m pytest -q -p no:cacheprovider tests/test_train.py -k ddp 2>&1 | tee "$OUT/tests_ddp.log" | tail -5
             "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 -m fft_lm.train_fixed_full \
               --data .data/jargon.txt.gz --preset 29m-hybrid --steps-per-epoch ${DDP_STEPS:-300} --epochs 1 \
               --no-progress --ckpt-path /tmp/ddp/ckpt.pt --plot-path - 2>&1 | tee "$OUT/ddp_train.log" | tail -12
             cp /tmp/ddp/metrics.jsonl "$OUT/ddp_metrics.jsonl" 2>/dev/null ;;
    sanitize) for tool in memcheck racecheck synccheck; do
               args=""; [ $tool = memcheck ] || args="--quick"
               timeout 240 compute-sanitizer --tool $tool --error-exitcode 9 "$PY" benchmarks/sanitize_cuda.py $args 2>&1 \
                 | tee "$OUT/sanitize_$tool.log" | grep -E "ERROR SUMMARY|FAIL|ALL OK|Error|error" | head -20
             done ;;
    # The segfault seen once (test_bad_inputs after the CUDA tests, same process): rerun that order
    # without xdist under cuda-gdb; on a crash, print every thread's native backtrace.
    segv)    timeout 300 cuda-gdb -q -batch -ex run -ex "thread apply all bt 25" --args "$PY" -m pytest -q -x -p no:xdist \
               -p no:cacheprovider tests/test_phase_rotate.py 2>&1 | tee "$OUT/segv.log" | tail -60 ;;
    # Nsight Compute on the causal_conv kernels at the benchmark shapes (what limits each one);
    # NCU_KERNELS narrows the kernels, NCU_ARGS the shapes (e.g. '--batch 2 --shapes 65536:65536').
    ncu)     timeout ${NCU_TIMEOUT:-240} ncu --profile-from-start off --kernel-name "${NCU_KERNELS:-regex:conv_|columns_|rows_}" --section SpeedOfLight --section Occupancy \
               --section WarpStateStats --section ComputeWorkloadAnalysis \
               --metrics l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum \
               "$PY" benchmarks/profile_causal_conv.py ${NCU_ARGS:-} > "$OUT/ncu.txt" 2>&1
             grep -E "profiled|(conv_|columns_|rows_).*kernel|Duration|Memory Throughput|DRAM Throughput|Compute \(SM\) Throughput|Achieved Occupancy|bank_conflicts|wavefronts_mem_shared|Registers Per|Block Limit|Stall|Warp Cycles Per Issued|Issue Slots Busy|Executed Ipc A|Pipe" "$OUT/ncu.txt" \
               | sed -E 's/\(fft_tensor::\(anonymous namespace\)::ConvShape.*//' | head -250 ;;
    # Where each call's time goes: CUDA events vs CUDA-graph replay vs host wall, kernels from torch.profiler.
    breakdown) for dt in fp32 bf16; do "$PY" benchmarks/profile_causal_conv.py --breakdown --dtype $dt ${NCU_ARGS:-}; done 2>&1 \
               | tee "$OUT/breakdown.txt" | head -220 ;;
    clustercheck) for tool in memcheck racecheck; do
               timeout 150 compute-sanitizer --tool $tool --error-exitcode 9 "$PY" benchmarks/sanitize_cuda.py --cluster 2>&1 \
                 | tee "$OUT/sanitize_cluster_$tool.log" | grep -E "ERROR SUMMARY|FAIL|ALL OK|rel err" | head -10
             done ;;
    realwindow) "$PY" -m pytest -q -n 8 -p no:cacheprovider tests/test_causal_conv.py -k "cuda and (real_window or fourstep or cluster)" 2>&1 \
               | tee "$OUT/tests_real_window.log" | tail -8
             for tool in memcheck racecheck; do  # side by side: each runs both kernel variants
               timeout 200 compute-sanitizer --tool $tool --error-exitcode 9 "$PY" benchmarks/sanitize_cuda.py --real-window \
                 > "$OUT/sanitize_real_window_$tool.log" 2>&1 &
             done
             wait
             grep -hE "ERROR SUMMARY|RACECHECK SUMMARY|FAIL|ALL OK|Error|Traceback" "$OUT"/sanitize_real_window_*.log | head -12
             for regs in 0 forward 1; do
               conv_variant realwindow_regs_$regs FFT_TENSOR_CONV_REAL_WINDOW_REGS=$regs -- --lengths 12288,16384 --kernels L --no-peer
             done
             conv_variant realwindow_off FFT_TENSOR_CONV_REAL_WINDOW=0 -- --lengths 12288,16384 --kernels L --no-peer ;;
    # The real-window path's taps spectrum and grad_k inverse as kernels of its own (twenty-sixth session):
    # its tests and the switch tests, memcheck and racecheck side by side on its cases, Lk = L at 12K and
    # 16K, the kernel times at 16K.
    rwspectrum) "$PY" -m pytest -q -n 8 -p no:cacheprovider tests/test_causal_conv.py \
               -k "cuda and (real_window or switch or half_window or bad_inputs)" 2>&1 | tee "$OUT/tests_rwspectrum.log" | tail -6
             for tool in memcheck racecheck; do
               timeout 200 compute-sanitizer --tool $tool --error-exitcode 9 "$PY" benchmarks/sanitize_cuda.py --real-window \
                 > "$OUT/sanitize_rwspectrum_$tool.log" 2>&1 &
             done
             wait
             grep -hE "ERROR SUMMARY|RACECHECK SUMMARY|FAIL|ALL OK|Error|Traceback" "$OUT"/sanitize_rwspectrum_*.log | head -12
             conv_variant rwspectrum -- --lengths 12288,16384 --kernels L --no-peer
             for dt in fp32 bf16; do "$PY" benchmarks/profile_causal_conv.py --breakdown --dtype $dt --shapes 16384:16384; done 2>&1 \
               | tee "$OUT/breakdown_rwspectrum.txt" | head -80 ;;
    # the window kernel as a programmatic dependent of the spectrum kernel: its tests, compute-sanitizer
    # on the window cases, and the grid with it on (default) and off
    pdl)     "$PY" -m pytest -q -n 8 -p no:cacheprovider tests/test_causal_conv.py -k "cuda and (pdl or window or small or odd)" 2>&1 \
               | tee "$OUT/tests_pdl.log" | tail -6
             quick_sanitizers pdl
             for v in 1 0; do
               conv_variant pdl$v FFT_TENSOR_CONV_PDL=$v -- --no-peer  # all lengths: many-window rows must not lose
             done ;;
    # The tensor-core window kernel (FFT_TENSOR_CONV_TC=1, tc_window.cuh): its tests, compute-sanitizer on
    # the quick cases with it on (bf16 L = 1000, Lk = 1000 takes it), then bf16 Lk = L at 1K-4K with it and without.
    tc)      "$PY" -m pytest -q -n 8 -p no:cacheprovider tests/test_causal_conv.py -k "tc_window" 2>&1 \
               | tee "$OUT/tests_tc.log" | tail -12
             quick_sanitizers tc FFT_TENSOR_CONV_TC=1
             for v in 1 0; do
               conv_variant tc$v FFT_TENSOR_CONV_TC=$v -- --no-peer --dtypes bf16 --kernels L --lengths ${TC_LENGTHS:-1024,2048,4096}
             done ;;
    # The kHalf kernels (FFT_TENSOR_CONV_HALF, default on: one-window plans with L <= N/2 skip the window's
    # zero half): their tests and the window/real-window tests around them, compute-sanitizer on the quick
    # cases (N = 2048 one window) and the real-window cases, then Lk = L at 1K-16K with them and without.
    half)    "$PY" -m pytest -q -n 8 -p no:cacheprovider tests/test_causal_conv.py -k "cuda and (half_window or real_window or window or odd)" 2>&1 \
               | tee "$OUT/tests_half.log" | tail -6
             timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 "$PY" benchmarks/sanitize_cuda.py --real-window \
               > "$OUT/sanitize_half_rw_memcheck.log" 2>&1 &
             quick_sanitizers half
             for v in 1 0; do
               conv_variant half$v FFT_TENSOR_CONV_HALF=$v -- --no-peer --kernels L --lengths ${HALF_LENGTHS:-1024,2048,4096,8192,16384}
             done ;;
    # The radix-3 windows (FFT_TENSOR_CONV_RADIX3=1, radix3.cuh): their tests, the three sanitizers on
    # sanitize_cuda.py --radix3, then Lk = L at lengths they serve (and two they do not) with them and without.
    radix3)  "$PY" -m pytest -q -n 8 -p no:cacheprovider tests/test_causal_conv.py -k "radix3 or switches" 2>&1 \
               | tee "$OUT/tests_radix3.log" | tail -6
             for tool in memcheck racecheck synccheck; do
               timeout 200 compute-sanitizer --tool $tool --error-exitcode 9 "$PY" benchmarks/sanitize_cuda.py --radix3 \
                 > "$OUT/sanitize_radix3_$tool.log" 2>&1 &
             done
             wait
             grep -hE "ERROR SUMMARY|RACECHECK SUMMARY|SYNCCHECK|FAIL|ALL OK|Error|Traceback" "$OUT"/sanitize_radix3_*.log | head -12
             for v in 1 0; do
               conv_variant radix3$v FFT_TENSOR_CONV_RADIX3=$v -- --no-peer --graphs --kernels L --lengths ${RADIX3_LENGTHS:-1500,3000,4096,6144,8192,12288,16384}
             done ;;
    # FFT_TENSOR_CONV_RADIX3=grad_k (only the radix-3 grad_k, at Lk = L 4097-6144): its tests and the
    # power-of-two kernels' pinned ones, then the timing with grad_k (RADIX3_GK_VARIANTS="grad_k 0": against
    # 0 too, "real grad_k" for RADIX3=real against it; the radix3 stage times 1 and 0).
    radix3gk) "$PY" -m pytest -q -n 8 -p no:cacheprovider tests/test_causal_conv.py \
               -k "cuda and (radix3 or half_window or grad_k_groups or switch)" 2>&1 | tee "$OUT/tests_radix3gk.log" | tail -6
             for v in ${RADIX3_GK_VARIANTS:-grad_k}; do
               conv_variant radix3$v FFT_TENSOR_CONV_RADIX3=$v -- --no-peer --graphs --kernels L --lengths ${RADIX3_LENGTHS:-4097,5000,6144}
             done ;;
    fourstepcheck) for tool in memcheck racecheck; do
               timeout 110 compute-sanitizer --tool $tool --error-exitcode 9 "$PY" benchmarks/sanitize_cuda.py --fourstep 2>&1 \
                 | tee "$OUT/sanitize_fourstep_$tool.log" | grep -E "ERROR SUMMARY|FAIL|ALL OK|rel err" | head -12
             done ;;
    ops)     "$PY" benchmarks/bench_phase_rotate.py 2>&1 | tee "$OUT/bench_phase_rotate.log" | tail -20
             conv_variant main -- ${CC_ARGS:-} ;;
    conv)    conv_variant main -- ${CC_ARGS:-} ;;
    # the cluster kernels at 16K-64K with full-length kernels: general, padded (loads), padded (exchange)
    clustervariants) for v in 0 1 exchange; do
               conv_variant padded_$v FFT_TENSOR_CONV_CLUSTER_PADDED=$v -- --lengths 16384,65536 --kernels L --no-peer
             done ;;
    # the overlap-save window floor (FFT_TENSOR_CONV_MIN_WINDOW): the op at 1K/4K with 128 taps and the
    # SpectralLM's training step at 1K (its kernels take the FFT size in force), 1024 (default) and 512
    windows) for w in 1024 512; do
               conv_variant window$w FFT_TENSOR_CONV_MIN_WINDOW=$w -- --lengths 1024,4096 --kernels 128 --no-peer
               # fft_size pinned: the same kernel parameterisation under either window, only the op's plan moves
               FFT_TENSOR_CONV_MIN_WINDOW=$w "$PY" benchmarks/bench_lm_throughput.py --families spectral --lengths 1024 \
                 --spectral-set fft_size=1024 ${LM_ARGS:-} 2>&1 | tee "$OUT/bench_lm_window$w.log" | grep -E "L=|rror" | head -4
               [ -f "$OUT/bench_lm_throughput.md" ] && mv "$OUT/bench_lm_throughput.md" "$OUT/bench_lm_window$w.md"
             done ;;
    lm)      "$PY" benchmarks/bench_lm_throughput.py ${LM_ARGS:-} 2>&1 | tee "$OUT/bench_lm_throughput.log" | tail -20 ;;
    # The LM at 1K/4K with each conv variant in one run: direct (default), FFT windows, tiled direct
    # reading the (B, L, D) activations in place.
    lmvariants) for v in default fftwindows channelslast; do
               case $v in default) env="" ;; fftwindows) env="FFT_TENSOR_CONV_DIRECT_MAX_TAPS=0" ;;
                                   channelslast) env="FFT_TENSOR_CONV_CHANNELS_LAST=1" ;; esac
               fams=spectral; [ $v = default ] && fams=spectral,gpt
               env $env "$PY" benchmarks/bench_lm_throughput.py --lengths 1024,4096 --families $fams 2>&1 \
                 | tee "$OUT/bench_lm_$v.log" | tail -6
               [ -f "$OUT/bench_lm_throughput.md" ] && mv "$OUT/bench_lm_throughput.md" "$OUT/bench_lm_$v.md"
             done ;;
    # The training CLI itself on the GPU: --compile and bf16, 60 steps as 30 + --resume 30.
    traincompile) rm -rf /tmp/traincompile
             for extra in "--stop-after-steps 30" "--resume"; do
               "$PY" -m fft_lm.train_fixed_full --data ${TC_DATA:-.data/gcide.txt.gz} --preset small --compile --amp ${TC_ARGS:-} \
                 --steps-per-epoch 60 --batch-size 16 --eval-every 30 --log-every-steps 10 --no-progress \
                 --ckpt-path /tmp/traincompile/ckpt.pt --metrics-path /tmp/traincompile/metrics.jsonl \
                 --plot-path /tmp/traincompile/plot.png $extra 2>&1 | tee -a "$OUT/traincompile.log" | tail -4
             done ;;
    # the grad_k kernels (16384-point windows and clusters) and the paths around them
    gradktests) "$PY" -m pytest -q -n 16 -p no:cacheprovider tests/test_causal_conv.py -k "cuda and (cluster or grad or small_upstream or long)" 2>&1 \
               | tee "$OUT/tests_gradk.log" | tail -8 ;;
    # The LM at 1K and 4K under other torch.compile settings: whole model, CUDA graphs per block
    # (reduce-overhead). (Whole model with reduce-overhead as well took past the call's 420 s limit.)
    lmcompile) for v in "model default" "blocks reduce-overhead"; do
               set -- $v
               "$PY" benchmarks/bench_lm_throughput.py --lengths 1024,4096 --compile-scope $1 --compile-mode $2 2>&1 \
                 | tee "$OUT/bench_lm_$1_$2.log" | grep -E "L=|error|Error" | head -8
               [ -f "$OUT/bench_lm_throughput.md" ] && mv "$OUT/bench_lm_throughput.md" "$OUT/bench_lm_$1_$2.md"
             done ;;
    # the same grid with CUDA graphs per block for both families (torch.compile mode reduce-overhead)
    lmgraphs) [ -f "$OUT/bench_lm_throughput.md" ] && mv "$OUT/bench_lm_throughput.md" "$OUT/bench_lm_throughput_grid.md"
             "$PY" benchmarks/bench_lm_throughput.py --compile-mode reduce-overhead ${LM_ARGS:-} 2>&1 | tee "$OUT/bench_lm_graphs.log" | tail -12
             [ -f "$OUT/bench_lm_throughput.md" ] && mv "$OUT/bench_lm_throughput.md" "$OUT/bench_lm_graphs.md" ;;
    # the grid with Inductor's C++ wrapper (compiled graphs launch from C++, not Python); LMCPP_ARGS or LM_ARGS
    lmcpp)   [ -f "$OUT/bench_lm_throughput.md" ] && mv "$OUT/bench_lm_throughput.md" "$OUT/bench_lm_throughput_grid.md"
             TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) timeout ${LMCPP_TIMEOUT:-240} "$PY" benchmarks/bench_lm_throughput.py --cpp-wrapper ${LMCPP_ARGS:-${LM_ARGS:-}} 2>&1 | tee "$OUT/bench_lm_cpp.log" | tail -12
             [ -f "$OUT/bench_lm_throughput.md" ] && mv "$OUT/bench_lm_throughput.md" "$OUT/bench_lm_cpp.md" ;;
    lmprofile) [ -f "$OUT/bench_lm_throughput.md" ] && mv "$OUT/bench_lm_throughput.md" "$OUT/bench_lm_throughput_grid.md"
             "$PY" benchmarks/bench_lm_throughput.py --lengths 1024 --profile ${LMPROFILE_ARGS:-${LM_ARGS:-}} 2>&1 | tee "$OUT/bench_lm_profile.log" | tail -70
             [ -f "$OUT/bench_lm_throughput.md" ] && mv "$OUT/bench_lm_throughput.md" "$OUT/bench_lm_profile.md" ;;
    # Nsight Compute on one chunk_decode launch (29m decoder, bf16, cluster 16): the details page and
    # per-line stall samples (CUDA source and SASS, gzipped CSV).
    decodencu) FFT_TENSOR_DECODE_CLUSTER=${DECODE_CLUSTER:-16} timeout 300 ncu --kernel-name regex:chunk_decode_kernel \
               --launch-skip 2 --launch-count 1 --set full --import-source yes -f -o /tmp/decode_ncu \
               "$PY" benchmarks/bench_chunk_decode.py --child --replays 3 > "$OUT/decode_ncu_run.log" 2>&1
             ncu -i /tmp/decode_ncu.ncu-rep --page details > "$OUT/decode_ncu.txt" 2>&1
             ncu -i /tmp/decode_ncu.ncu-rep --page raw 2>&1 | grep -E "average_warps_issue_stalled_.*per_issue_active|gpu__time_duration.sum|launch__cluster|sm__warps_active" \
               | awk '$NF+0 > 0.01 || /duration|cluster/' > "$OUT/decode_ncu_stalls.txt"
             for src in cuda sass; do
               ncu -i /tmp/decode_ncu.ncu-rep --page source --csv --print-source $src 2>&1 | gzip > "$OUT/decode_ncu_$src.csv.gz"
             done
             grep -E "Duration|Registers Per|Achieved Occupancy|Warp Cycles Per Issued|Issue Slots Busy|Stall|L1/TEX Hit|L2 Hit|Executed Ipc" "$OUT/decode_ncu.txt" | head -40; cat "$OUT/decode_ncu_stalls.txt" ;;
    stamps) FFT_TENSOR_DECODE_STAMPS_BUILD=1 MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 FFT_TENSOR_CUDA=1 "$PY" setup.py build_ext --inplace > "$OUT/build_stamps.log" 2>&1 && "$PY" benchmarks/decode_stamps.py 2>&1 | tee "$OUT/decode_stamps.log" | tail -80 ;;
    decodebench) "$PY" benchmarks/bench_chunk_decode.py 2>&1 | tee "$OUT/bench_chunk_decode.log" | tail -14 ;;
    genprofile) "$PY" benchmarks/profile_generation.py ${GP_ARGS:-} 2>&1 | tee "$OUT/profile_generation.log" | tail -60 ;;
    updatetests) "$PY" -m pytest -q -n 8 -p no:cacheprovider tests/test_causal_conv_update.py tests/test_rms_norm.py 2>&1 | tee "$OUT/tests_update.log" | tail -8 ;;
    gen)     "$PY" benchmarks/bench_generation.py ${GEN_ARGS:-} 2>&1 | tee "$OUT/bench_generation.log" | tail -20 ;;
    # the same without the low-precision weight copy (weights cast from fp32 by autocast every step)
    gencontrol) mkdir -p /tmp/gencontrol; OUT=/tmp/gencontrol "$PY" benchmarks/bench_generation.py --no-low-precision-weights ${GEN_ARGS:-} 2>&1 \
               | tee "$OUT/bench_generation_control.log" | tail -12 ;;
    quality) "$PY" benchmarks/bench_lm_quality.py ${Q_ARGS:-} 2>&1 | tee "$OUT/bench_lm_quality.log" | tail -20 ;;
    # how much context two checkpoints use (quality prints this table itself; this reruns it on its checkpoints)
    contextuse) "$PY" benchmarks/context_use.py --ckpt /tmp/bench_lm_quality/spectral/ckpt.pt \
                  --ckpt /tmp/bench_lm_quality/gpt/ckpt.pt ${CU_ARGS:-} 2>&1 | tee "$OUT/context_use.log" | tail -14 ;;
    *) echo "unknown stage $stage"; status=1 ;;
  esac
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  echo "stage $stage: $(( $(date +%s) - t0 )) s"
done
# A stage's status above is its last pipeline's: scan every log for failed tests and sanitizer errors too.
if failed=$(grep -lE "[0-9]+ (failed|errors?)[,a-z0-9 ]* in [0-9.]+s|ERROR SUMMARY: [1-9]|RACECHECK SUMMARY: [1-9]" "$OUT"/*.log 2>/dev/null); then
  echo "failures in: $(echo $failed | tr '\n' ' ')"; status=1
fi
# The device tool returns at most 8 files from $OUT: past that, pack the logs into one archive
# (the markdown tables stay loose).
if [ "$(ls "$OUT" | wc -l)" -gt 8 ]; then
  (cd "$OUT" && tar czf logs.tar.gz --remove-files $(ls | grep -vE '\.md$|^logs\.tar\.gz$'))
  echo "logs packed into logs.tar.gz: $(ls "$OUT" | tr '\n' ' ')"
fi
exit $status
