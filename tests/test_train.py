"""train.py and slm.sample on a small synthetic corpus: flags, a smoke run, bit-exact resume,
a 2-process gloo torchrun run, and sampling from the checkpoint."""
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import train
from slm import sample
from slm.data import prepare_data
from tests.test_data import make_corpus

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--n-layer=2", "--n-head=2", "--n-embd=32", "--block-size=32", "--batch-size=4",
        "--vocab-size=300", "--eval-iters=2", "--log-interval=2", "--sample-tokens=8",
        "--device=cpu", "--backend=torch", "--quiet"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = make_corpus(tmp_path_factory.mktemp("corpus"))
    cache = tmp_path_factory.mktemp("cache")
    prepare_data(folder, vocab_size=300, cache_dir=cache, verbose=False)  # tokenize once
    return folder, cache


def args(corpus, out_dir, *extra):
    folder, cache = corpus
    return [f"--data={folder}", f"--cache-dir={cache}", f"--out-dir={out_dir}", *TINY, *extra]


# ----- flags --------------------------------------------------------------------------------

def test_flags_are_typed_from_the_dataclasses():
    cfg, over = train.parse_args(["--lr=1e-3", "--max-steps", "7", "--compile", "--resume=false",
                                  "--n-layer=3", "--mlp", "swiglu", "--bias=false",
                                  "--n_kv_head=2"])
    assert cfg.lr == 1e-3 and cfg.max_steps == 7 and cfg.compile is True and cfg.resume is False
    assert over == {"n_layer": 3, "mlp": "swiglu", "bias": False, "n_kv_head": 2}
    assert train.parse_args([])[0] == train.TrainConfig()
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert train.default_block_size("gpt2-124m", cuda) == 1024
    assert train.default_block_size("gpt2-124m", cpu) == 128


def test_flag_errors_are_clear(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--no-such-flag=1"])
    assert "unrecognized arguments: --no-such-flag=1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_args(["--max-steps=ten"])
    assert "invalid int value: 'ten'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_args(["--compile=maybe"])
    with pytest.raises(ValueError, match=r"unknown preset 'huge'.*tiny"):
        train.parse_args(["--preset=huge"])
    with pytest.raises(ValueError, match="--batch-size must be >= 1"):
        train.parse_args(["--batch-size=0"])


def test_lr_schedule_warms_up_then_decays_to_min():
    cfg = train.TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    lrs = [train.lr_at(s, cfg) for s in range(111)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[60] == pytest.approx(0.55) and lrs[110] == pytest.approx(0.1)


def test_weight_decay_only_on_2d_weights():
    from slm.gpt import GPT
    model = GPT.from_preset("tiny", n_layer=1, n_embd=32, n_head=2, vocab_size=64, block_size=8,
                            backend="torch")
    opt = train.make_optimizer(model, train.TrainConfig(weight_decay=0.3), torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.3 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


# ----- runs ---------------------------------------------------------------------------------

def test_smoke_run_learns_checkpoints_and_samples(corpus, tmp_path, capsys):
    result = train.main(args(corpus, tmp_path, "--max-steps=40", "--lr=1e-2", "--warmup-steps=5",
                             "--eval-interval=20", "--ckpt-interval=20"))
    out = capsys.readouterr().out
    assert result["step"] == 40
    assert result["val_loss"] < result["first_val_loss"] - 1.0, out  # it learns
    ckpt = tmp_path / "ckpt"
    assert {"model.safetensors", "config.json", "state.pt", "tokenizer.json"} <= \
        {p.name for p in ckpt.iterdir()}
    assert "step 0 | val loss" in out and "step 40 | val loss" in out and "sample:" in out
    log_lines = [line for line in out.splitlines() if line.startswith("step 2 |")]
    assert len(log_lines) == 1
    fields = [f.strip() for f in log_lines[0].split("|")]
    assert len(fields) == 7 and fields[1].startswith("loss ") and fields[2].startswith("lr ")
    assert fields[3].endswith(" ms") and fields[4].endswith(" tok/s")
    assert fields[5] == "MFU n/a" and fields[6] == "torch"  # no MFU without a known peak
    assert "checkpoint: " in out and out.count("checkpoint: ") == 2  # step 20 and the end

    texts = sample.main(["--ckpt", str(ckpt), "--prompt", "def f1", "--max-new-tokens", "12",
                         "--temperature", "0", "--device", "cpu"])
    assert len(texts) == 1 and texts[0].startswith("def f1") and len(texts[0]) > len("def f1")
    again = sample.sample(ckpt, "def f1", max_new_tokens=12, temperature=0, device="cpu")
    assert again == texts  # greedy is deterministic
    seeded = [sample.sample(ckpt, "return", 10, temperature=1.0, top_k=20, seed=s,
                            num_samples=2, device="cpu") for s in (1, 1, 2)]
    assert seeded[0] == seeded[1] and len(seeded[0]) == 2


def test_resume_is_bit_identical(corpus, tmp_path):
    common = ["--max-steps=8", "--dropout=0.1", "--grad-accum=2", "--lr=1e-2",
              "--warmup-steps=2", "--eval-interval=3", "--sample-tokens=0"]
    whole = train.main(args(corpus, tmp_path / "a", *common))
    first = train.main(args(corpus, tmp_path / "b", *common, "--stop-step=4"))
    assert first["step"] == 4
    resumed = train.main(args(corpus, tmp_path / "b", *common, "--resume"))
    assert resumed["step"] == 8 and resumed["val_loss"] == whole["val_loss"]
    wa = load_file(tmp_path / "a" / "ckpt" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "ckpt" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    # A plain --resume restores the run's own training flags from the checkpoint. The run-control flags
    # (--device, --backend: this machine's choice, never restored) are given as the first run had them,
    # so that on a machine with a GPU the resumed half runs on the CPU like the run it is compared with.
    train.main(args(corpus, tmp_path / "d", *common, "--stop-step=4"))
    plain = train.main(["--resume", f"--out-dir={tmp_path / 'd'}", "--quiet", "--sample-tokens=0",
                        "--device=cpu", "--backend=torch"])
    assert plain["step"] == 8
    wd = load_file(tmp_path / "d" / "ckpt" / "model.safetensors")
    assert all(torch.equal(wa[k], wd[k]) for k in wa)
    # Not trivially equal: another seed ends elsewhere.
    other = train.main(args(corpus, tmp_path / "c", *common, "--seed=7"))
    assert other["val_loss"] != whole["val_loss"]


def test_resume_without_checkpoint_is_a_clear_error(corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train.main(args(corpus, tmp_path, "--resume"))


def test_cli_reports_errors_without_a_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "train.py", f"--data={tmp_path / 'empty'}",
                           f"--cache-dir={tmp_path / 'cache'}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "no text files found" in proc.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 autocast + compile need CUDA")
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_bf16_run(corpus, tmp_path, capsys, compile):
    result = train.main([*args(corpus, tmp_path, "--max-steps=30", "--lr=1e-2",
                               "--warmup-steps=5", "--peak-flops=1e14", f"--compile={compile}"),
                         "--device=cuda", "--backend=auto"])
    out = capsys.readouterr().out
    assert "device cuda" in out and "dtype bfloat16" in out
    assert result["val_loss"] < result["first_val_loss"] - 1.0, out
    line = next(x for x in out.splitlines() if x.startswith("step 2 |"))
    assert line.split("|")[5].strip().endswith("%")  # MFU against the given peak
    texts = sample.sample(tmp_path / "ckpt", "def f1", 8, temperature=0, device="cuda")
    assert texts[0].startswith("def f1")


@pytest.mark.slow
def test_torchrun_two_processes_gloo(corpus, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "train.py", *args(corpus, tmp_path, "--max-steps=6", "--eval-interval=3",
                             "--ckpt-interval=3", "--grad-accum=2")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "device cpu x2" in out
    assert f"{32 * 4 * 2 * 2:,} tokens/step" in out  # block * batch * grad_accum * ranks
    assert out.count("step 0 | val loss") == 1  # only rank 0 logs
    assert out.count("step 6 | val loss") == 1 and out.count("sample:") == 1
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    state = torch.load(tmp_path / "ckpt" / "state.pt", weights_only=False)
    assert state["step"] == 6 and len(state["extra"]["rng"]) == 2  # every rank's RNG state
