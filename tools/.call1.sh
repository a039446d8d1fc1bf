set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
mkdir -p $OUT
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())"
ATT_SWEEP_ONLY=1 ATT_SWEEP_TMA=0 ATT_SWEEP_PARTS=fwd ATT_BUDGET_S=110 ATT_SWEEP_SHAPES=128x1024,64x1024,128x16384 \
  ATT_SWEEP_CONFIGS=128:128:8:3,128:64:8:3,128:32:8:3,128:32:8:4,128:64:8:2,64:64:4:3,128:64:4:3,128:128:8:2 \
  timeout 130 python3 tools/gpu_attention.py > $OUT/att_sweep.log 2>&1
FFN_QUICK=1 FFN_BUDGET_S=170 FFN_POINTS=swiglu:768:2048,geglu:768:2048,gelu:768:3072,swiglu:2048:5440 \
  timeout 200 python3 tools/gpu_ffn.py > $OUT/ffn.out 2>&1
timeout 230 python3 -m pytest tests/test_ffn.py -q -p no:cacheprovider -k "every_tile_config or epilogue_loaded" > $OUT/tests_ffn.log 2>&1; echo "tests rc=$?"
tail -4 $OUT/tests_ffn.log
grep -v "^$" $OUT/att_sweep.log | tail -28
tail -45 $OUT/ffn.out
