"""The build targets the x86-64 baseline and picks AVX2 loops at run time: on an emulated CPU
without AVX (qemu-user's Nehalem model) the C kernel tests pass and `qtune run` matches the
native run, and no AVX/AVX2/BMI instruction lies outside the functions cloned for dispatch."""
import os
import re
import shutil
import signal
import subprocess

import numpy as np
import pytest

from conftest import REPO, qtune_path

CPU_MODEL = "Nehalem"  # SSE4.2, no AVX
# C tests of the loops that have baseline and AVX2 copies (quantizers, elementwise, BatchNorm,
# pooling, reductions, softmax, SGD); the convolution tests run oneDNN's code, not ours.
KERNEL_TESTS = ("apot_", "grad_", "kernels_pools", "kernels_global_avgpool",
                "kernels_batchnorm", "kernels_relu_clip", "kernels_binary", "kernels_softmax",
                "kernels_reduce", "kernels_gemm")
# oneDNN and OpenBLAS held to the emulated CPU's instruction set in the native run too, so
# that both runs compute the convolutions and matrix products alike.
LIB_ENV = {"ONEDNN_MAX_CPU_ISA": "SSE41", "OPENBLAS_CORETYPE": "Nehalem", "OMP_NUM_THREADS": "2"}


def _need(tool, package):
    path = shutil.which(tool)
    if not path:
        msg = "%s not found (Debian package %s; scripts/deps.sh installs it)" % (tool, package)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + " [CI=true: required]")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="module")
def qemu():
    return _need("qemu-x86_64", "qemu-user")


def _run(argv, env=None, timeout=600):
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          errors="replace", timeout=timeout, env=full, cwd=REPO)


def _emulated(qemu, argv, env=None, timeout=600):
    return _run([qemu, "-cpu", CPU_MODEL] + list(argv), env, timeout)


def _describe(p):
    return "command: %s\nexit: %s\nstdout:\n%s\nstderr:\n%s" % (
        " ".join(p.args), p.returncode, p.stdout[-2000:], p.stderr[-2000:])


def test_emulated_cpu_rejects_avx2(qemu, tmp_path):
    """The emulated CPU model really lacks AVX2: a program using it dies there."""
    gcc = _need("gcc", "build-essential")
    src = tmp_path / "avx2.c"
    src.write_text("int main(void)\n{\n"
                   "    __asm__ volatile(\"vpxor %%ymm0, %%ymm0, %%ymm0\\n\\t\"\n"
                   "                     \"vpaddd %%ymm0, %%ymm0, %%ymm0\" ::: \"xmm0\");\n"
                   "    return 0;\n}\n")
    exe = tmp_path / "avx2"
    p = _run([gcc, "-O1", str(src), "-o", str(exe)])
    assert p.returncode == 0, _describe(p)
    p = _emulated(qemu, [exe])
    assert p.returncode == -signal.SIGILL, (
        "AVX2 code did not die of SIGILL on the emulated %s CPU\n%s" % (CPU_MODEL, _describe(p)))


def test_kernel_tests_without_avx(qemu):
    tests_bin = os.path.join(os.path.dirname(qtune_path()), "qtune-tests")
    if not os.path.exists(tests_bin):
        pytest.fail("%s not found (run make)" % tests_bin)
    for name in KERNEL_TESTS:
        p = _emulated(qemu, [tests_bin, name])
        assert p.returncode == 0, _describe(p)
        last = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
        m = re.match(r"(\d+) passed, (\d+) failed, \d+ skipped$", last)
        assert m and int(m.group(1)) > 0 and m.group(2) == "0", _describe(p)


def _cifar(folder, train, test, seed=0):
    """A synthetic CIFAR-10 binary folder."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = [("data_batch_%d.bin" % i, train) for i in range(1, 6)] + [("test_batch.bin", test)]
    for name, count in files:
        rec = np.concatenate([rng.integers(0, 10, (count, 1), dtype=np.uint8),
                              rng.integers(0, 256, (count, 3072), dtype=np.uint8)], axis=1)
        rec.tofile(os.path.join(folder, name))
    return folder


def test_run_matches_native_without_avx(qemu, qtune, tmp_path):
    """A float ResNet-20 and its post-training APoT W4A4 quantization, run natively and on
    the emulated CPU: the outputs agree (the baseline copies of the loops compute what the
    AVX2 copies do)."""
    fp = tmp_path / "r20.onnx"
    qtune("init", "resnet20", "--input", "3x32x32", "--classes", "10", "-o", fp).check_ok()
    data = _cifar(str(tmp_path / "cifar"), 32, 16)
    q = tmp_path / "r20_w4a4.onnx"
    qtune("finetune", fp, "--data", data, "--bits", "4", "--scheme", "apot", "--epochs", "0",
          "--batch", "16", "--calib-batches", "1", "--test-limit", "16", "--threads", "2",
          "--preset", "cifar10", "--quiet", "-o", q).check_ok()
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32))
    for model in (fp, q):
        ys = []
        for tag, prefix in (("native", []), ("emulated", [qemu, "-cpu", CPU_MODEL])):
            y = tmp_path / ("%s.%s.npy" % (model.stem, tag))
            p = _run(prefix + [qtune.path, "run", model, "--input", x, "--output", y], LIB_ENV)
            assert p.returncode == 0, _describe(p)
            ys.append(np.load(y))
        native, emulated = ys
        assert native.shape == (4, 10) and np.all(np.isfinite(native))
        assert np.allclose(native, emulated, rtol=1e-5, atol=1e-5), (
            "%s: largest difference %g" % (model.name, np.abs(native - emulated).max()))


# AVX (VEX-encoded xmm/ymm), AVX-512 (zmm) and the BMI/LZCNT/MOVBE/POPCNT instructions of
# x86-64-v2/v3, none of which the baseline has.
_NOT_BASELINE = re.compile(r"%[yz]mm|\tv[a-z0-9]+ .*%xmm|"
                           r"\t(shlx|sarx|shrx|rorx|bzhi|pdep|pext|mulx|andn|lzcnt|movbe|popcnt) ")
_FUNC = re.compile(r"^[0-9a-f]+ <(.+)>:$")


@pytest.mark.parametrize("name", ["qtune", "qtune-tests"])
def test_no_avx_outside_cloned_functions(name):
    """Beyond the baseline only in the x86-64-v3 copies of cloned functions."""
    objdump = _need("objdump", "binutils")
    binary = os.path.join(os.path.dirname(qtune_path()), name)
    if not os.path.exists(binary):
        pytest.fail("%s not found (run make)" % binary)
    p = _run([objdump, "-d", "--no-show-raw-insn", binary], timeout=300)
    assert p.returncode == 0, _describe(p)
    func, bad, cloned = None, {}, set()
    for line in p.stdout.splitlines():
        m = _FUNC.match(line)
        if m:
            func = m.group(1)
            continue
        if _NOT_BASELINE.search(line):
            if func and ".arch_x86_64_v3" in func:
                cloned.add(func)
            else:
                bad.setdefault(func, line.strip())
    assert not bad, "instructions beyond x86-64 outside the cloned functions:\n" + "\n".join(
        "%s: %s" % kv for kv in sorted(bad.items())[:20])
    assert any(f.startswith("quant_act_forward_cpu") for f in cloned), (
        "no AVX2 copy of the quantizer kernels found (dispatch not built?)")
