"""seqcast.native: the compiled LSTM, GRU and RNN layers against torch.nn.LSTM, torch.nn.GRU and
torch.nn.RNN, and the fallback when they cannot be built."""

from __future__ import annotations

import copy
import platform
import shutil
from functools import partial

import pytest
import torch

from seqcast import native

from .conftest import draw_masks, random_lstm_stacks, separate_lstm_stacks

STACKS = {
    "lstm": native.native_lstm,
    "gru": native.native_gru,
    "rnn_tanh": native.native_rnn,
    "rnn_relu": partial(native.native_rnn, nonlinearity="relu"),
}

needs_compiler = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler to build seqcast.native"
)


@needs_compiler
def test_the_layer_compiles_where_a_compiler_exists():
    assert native.available(), native.unavailable_reason()


@needs_compiler
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the AVX branches are x86-64's")
def test_every_instruction_set_branch_of_the_kernel_compiles(tmp_path):
    # The kernel has gate math for AVX-512, for AVX2 with FMA, and plain loops for other CPUs, and
    # the build (-march=native) compiles only the host's branch, which is all the tests above run.
    # Hosts here have been Intel (AVX-512), AMD Zen 3 (AVX2) and Zen 4 (AVX-512) from session to session, so a change
    # made on one would otherwise reach the other unchecked: the other branches must at least compile
    # (syntax and types, no code generation; ~25 s each, run side by side), with the build's flags.
    # The source goes in a file, not through stdin: a compiler waiting for its stdin would not start
    # until the one before it had finished.
    import subprocess
    import sysconfig

    from torch.utils.cpp_extension import include_paths

    compiler = shutil.which("c++") or shutil.which("g++")
    native_macros = subprocess.run([compiler, "-march=native", "-dM", "-E", "-x", "c++", "/dev/null"],
                                   capture_output=True, text=True, check=True).stdout
    host = ("AVX-512" if "#define __AVX512F__ 1" in native_macros
            else "AVX2" if "#define __AVX2__ 1" in native_macros and "#define __FMA__ 1" in native_macros
            else "plain")
    includes = [f"-I{path}" for path in include_paths() + [sysconfig.get_paths()["include"]]]
    flags = [flag for flag in native._FLAGS if flag != "-march=native"]
    branches = {"AVX-512": "icelake-server", "AVX2": "haswell", "plain": "x86-64"}
    del branches[host]  # the build compiled (and the tests above ran) this one
    source = tmp_path / "kernel.cpp"
    source.write_text(native.SOURCE)
    runs = {
        name: subprocess.Popen(
            [compiler, "-std=c++17", "-fsyntax-only", "-w", "-DTORCH_EXTENSION_NAME=check",
             "-DTORCH_API_INCLUDE_EXTENSION_H", *includes, *flags, f"-march={march}", str(source)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name, march in branches.items()
    }
    errors = {}
    for name, run in runs.items():
        _, stderr = run.communicate()
        if run.returncode:
            errors[name] = stderr[-3000:]
    assert not errors, errors


@needs_compiler
@pytest.mark.parametrize("cell", sorted(native.CELLS))
@pytest.mark.parametrize(
    # units 6: a gate row shorter than one 16-float vector (AVX-512) and one 8-float one (AVX2); 50 (the
    # seed config's): 3 vectors and 2 lanes, or 6 vectors and 2 lanes
    # mkldnn off: PyTorch's brgemm falls back to its own GEMM for the per-step products
    "layers,n_features,k,steps,units,mkldnn",
    [(1, 3, 1, 9, 6, True), (3, 2, 3, 8, 6, True), (2, 1, 2, 1, 6, True), (2, 1, 2, 5, 50, True), (2, 1, 2, 5, 50, False)],
)
def test_native_stack_equals_separate_torch_modules_in_output_and_every_gradient(
    layers, n_features, k, steps, units, mkldnn, cell
):
    # The reference: K independent float64 torch.nn.LSTM (GRU) stacks run one by one on their own
    # inputs, with the same inverted-dropout masks applied between layers by hand.
    generator = torch.Generator().manual_seed(layers * 7 + k)
    x, stacks, masks, target, weights = random_lstm_stacks(
        generator, layers=layers, n_features=n_features, k=k, steps=steps, batch=5, units=units, dtype=torch.float64,
        cell=cell,
    )
    x_ref = x.clone().requires_grad_()
    reference = separate_lstm_stacks(x_ref, stacks, masks)
    ((reference - target) ** 2).sum().backward()
    # torch's own float32 modules on the same problem: how far float32 itself lands from float64
    # (with N(0, 1) weights over 50 units the GRU's pre-activations reach ~±20, and torch.nn.GRU in
    # float32 misses the float64 gradients by up to 1.1e-5 relative).
    x_32 = x.float().requires_grad_()
    stacks_32 = [[copy.deepcopy(layer).float() for layer in stack] for stack in stacks]
    out_32 = separate_lstm_stacks(x_32, stacks_32, [m.float() for m in masks])
    ((out_32.double() - target) ** 2).sum().backward()

    def close(got, torch_32, expected, what):
        # Within 1e-5 of the largest value, or within 8x torch's own float32 error where that is
        # larger: with N(0, 1) weights float32 rounding grows through saturated gates, and over 30
        # random seeds of a 3-layer, 6-unit stack (2026-12-06) the compiled layer's worst gradient
        # error was a median 1.0-1.6x and at most 3.4x (tanh RNN), 4.8x (GRU), 6.7x (LSTM) torch's.
        # A wrong formula gives errors of order 1.
        def error(a):
            return (a.double() - expected).abs().max().item()

        scale = max(expected.abs().max().item(), 1e-12)
        assert error(got) <= max(1e-5 * scale, 8 * error(torch_32)), (what, error(got) / scale, error(torch_32) / scale)

    x_native = x.float().requires_grad_()
    enabled, torch.backends.mkldnn.enabled = torch.backends.mkldnn.enabled, mkldnn
    try:
        out = STACKS[cell](x_native, weights, masks=[m.float() for m in masks] or None)
        close(out.detach(), out_32.detach(), reference.detach(), "output")
        ((out.double() - target) ** 2).sum().backward()
    finally:
        torch.backends.mkldnn.enabled = enabled

    close(x_native.grad, x_32.grad, x_ref.grad, "x")
    for m, (stack, stack_32) in enumerate(zip(stacks, stacks_32)):
        for l, (layer, layer_32) in enumerate(zip(stack, stack_32)):
            for i, name in enumerate(("weight_ih", "weight_hh", "bias_ih", "bias_hh")):
                close(weights[l][i].grad[m], getattr(layer_32, f"{name}_l0").grad, getattr(layer, f"{name}_l0").grad,
                      (m, l, name))
    # Separate gradient tensors for the two biases (in-place clipping would otherwise scale one twice).
    assert weights[0][2].grad.data_ptr() != weights[0][3].grad.data_ptr()


@needs_compiler
@pytest.mark.parametrize("cell", sorted(native.CELLS))
def test_one_model_s_own_weights_give_what_the_stacked_ones_give(cell):
    # A StackedRNN passes its parameters without the model axis (no unsqueeze nodes); the result and
    # the gradients, in each parameter's own shape, must be those of the K = 1 stacked call.
    generator = torch.Generator().manual_seed(3)
    x, _, masks, target, weights = random_lstm_stacks(
        generator, layers=3, n_features=2, k=1, steps=6, batch=4, units=20, dtype=torch.float32, cell=cell
    )
    own = [tuple(w[0].detach().clone().requires_grad_() for w in layer) for layer in weights]
    results = []
    for ws in (weights, own):
        out = STACKS[cell](x, ws, masks=masks)
        ((out - target) ** 2).sum().backward()
        results.append((out.detach(), [w.grad for layer in ws for w in layer]))
    assert torch.equal(results[0][0], results[1][0])
    for stacked, plain, w in zip(results[0][1], results[1][1], (w for layer in own for w in layer)):
        assert plain.shape == w.shape
        assert torch.equal(stacked[0], plain)


def test_a_failed_build_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_failure", None)
    monkeypatch.setenv("SEQCAST_NATIVE", "1")

    def broken(*args, **kwargs):
        raise RuntimeError("Error building extension 'seqcast_lstm'\nlong compiler output")

    monkeypatch.setattr("torch.utils.cpp_extension.load_inline", broken)
    with pytest.warns(RuntimeWarning, match="could not compile its LSTM/GRU/RNN kernel .*Error building extension"):
        assert not native.available()
    assert native.unavailable_reason().startswith("RuntimeError: Error building extension")
    assert not native.available()  # asked again: no second attempt, no second warning
    with pytest.raises(RuntimeError, match="not available"):
        native.native_lstm(torch.zeros(2, 1, 1, 1), [])


def test_each_torch_install_builds_under_its_own_name(monkeypatch, tmp_path):
    # Two venvs (two torch installs) must not share a build directory: its build files name the
    # headers of the torch that wrote them, so sharing made each venv rebuild after the other.
    # The name passed to load_inline is what picks the directory.
    names = []
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_failure", None)
    monkeypatch.setenv("SEQCAST_NATIVE", "1")
    monkeypatch.setattr("torch.utils.cpp_extension.load_inline", lambda name, **kwargs: names.append(name) or object())
    assert native.available()
    here = native.build_name()
    assert names == [here] and here == native.build_name()  # stable within one install
    monkeypatch.setattr(torch, "__file__", str(tmp_path / "other-venv" / "torch" / "__init__.py"))
    elsewhere = native.build_name()
    assert elsewhere != here and elsewhere.startswith("seqcast_lstm_")


def test_seqcast_native_0_skips_the_build(monkeypatch):
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_failure", None)
    monkeypatch.setenv("SEQCAST_NATIVE", "0")
    monkeypatch.setattr("torch.utils.cpp_extension.load_inline", lambda *a, **k: pytest.fail("built anyway"))
    assert not native.available()
    assert native.unavailable_reason() == "SEQCAST_NATIVE=0"


@needs_compiler
@pytest.mark.parametrize("cell", sorted(native.CELLS))
def test_native_stack_saturates_like_torch_and_passes_nan_through(cell):
    # Saturated gates (inputs of +-1e30) give what torch.nn.LSTM (GRU, RNN) gives, and a NaN weight
    # or input makes the output NaN: training must then stop as diverged, not go on with clamped values.
    torch.manual_seed(0)
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN,
              "rnn_relu": partial(torch.nn.RNN, nonlinearity="relu")}[cell](2, 20)
    stack = STACKS[cell]
    x = torch.randn(5, 3, 2)
    x[2, 1, 0], x[3, 2, 1] = 1e30, -1e30
    weights = [tuple(getattr(module, f"{name}_l0").detach().unsqueeze(0) for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))]
    with torch.no_grad():
        torch.testing.assert_close(stack(x.unsqueeze(1), weights)[0], module(x)[0][-1], rtol=1e-5, atol=1e-6)
    nan_input = x.clone()
    nan_input[1, 0, 0] = float("nan")
    out = stack(nan_input.unsqueeze(1), weights)[0]
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1:]).all()
    nan_weight = [tuple(w.clone() for w in weights[0])]
    nan_weight[0][1][0, 3, 4] = float("nan")
    assert torch.isnan(stack(x.unsqueeze(1), nan_weight)[0]).all()


# SplitMix64's first five outputs from state 1234567, as published with its reference C code
# (Vigna, prng.di.unimi.it/splitmix64.c).
SPLITMIX64_1234567 = [6457827717110365317, 3203168211198807973, 9817491932198370423, 4593380528125082431,
                      16408922859458223821]


def test_reference_masks_follow_splitmix64_bit_by_bit():
    keep = 0.8
    threshold = round(keep * 2**32)
    halves = [part for z in SPLITMIX64_1234567 for part in (z & 0xFFFFFFFF, z >> 32)]
    expected = torch.tensor([1 / keep if bits < threshold else 0.0 for bits in halves], dtype=torch.float32)
    assert torch.equal(native.masks_reference(1234567, keep, 1, 10), expected[None])
    assert torch.equal(native.masks_reference(1234567, keep, 1, 9)[0], expected[:9])  # ends on a low half
    # Rows of 3 starting at values 1, 5 and 9: odd starts, half-way through an output.
    assert torch.equal(native.masks_reference(1234567, keep, 2, 3, 1, 4), torch.stack([expected[1:4], expected[5:8]]))
    assert torch.equal(native.masks_reference(1234567, keep, 3, 2, 0, 3), torch.stack([expected[0:2], expected[3:5], expected[6:8]]))
    assert torch.equal(native.masks_reference(1234567, 1.0, 1, 10), torch.ones(1, 10))
    with pytest.raises(ValueError, match="keep"):
        native.masks_reference(1, 0.0, 1, 4)


@needs_compiler
@pytest.mark.parametrize(
    "rows,length,base,stride",
    [(1, 0, 0, 0), (1, 1, 0, 0), (1, 31, 0, 0), (1, 579201, 0, 0), (3, 5, 1, 7), (60, 1600, 96000, 3200), (4, 2, 9, 0)],
)
@pytest.mark.parametrize("keep", [0.8, 0.35, 1.0])
def test_compiled_masks_equal_the_numpy_reference(rows, length, base, stride, keep):
    seed = 2**63 - 2  # counters wrap around 2**64
    assert native.available(), native.unavailable_reason()
    got = native.dropout_masks(seed, keep, rows, length, base, stride)
    assert got.shape == (rows, length)
    assert torch.equal(got, native.masks_reference(seed, keep, rows, length, base, stride))


@needs_compiler
def test_masks_are_the_same_without_the_compiled_module(monkeypatch):
    assert native.available(), native.unavailable_reason()  # else both draws would be NumPy's
    shapes = [(60, 64, 50), (60, 64, 50), (64, 50)]
    first = draw_masks(shapes, 0.8, torch.Generator().manual_seed(3))
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_failure", "off")
    again = draw_masks(shapes, 0.8, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(first, again))


@needs_compiler
@pytest.mark.parametrize("lists", [1, 2, 3])
def test_adam_step_is_torch_adam_on_the_summed_gradients(lists):
    # The reference: torch.optim.Adam as training.make_optimizer builds it, stepping on the sum of
    # the gradient lists; the state the compiled pass leaves is the optimizer's own (a fresh
    # optimizer that loads its state_dict continues the same way).
    from seqcast import training

    generator = torch.Generator().manual_seed(lists)
    shapes = [(200, 3), (200, 50), (200,), (1, 50), (1,)]
    reference = [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]
    ours = [torch.nn.Parameter(p.detach().clone()) for p in reference]
    torch_adam = training.make_optimizer("adam", reference, 3e-3)
    native_adam = training.make_optimizer("adam", ours, 3e-3)
    for step in range(40):
        grads = [[torch.randn(s, generator=generator) * 10 ** (step % 3 - 1) for s in shapes] for _ in range(lists)]
        for i, p in enumerate(reference):
            p.grad = sum(g[i] for g in grads)
        torch_adam.step()
        if step == 0:  # the first step creates the state: torch's own, as in training
            for i, p in enumerate(ours):
                p.grad = sum(g[i] for g in grads)
            native_adam.step()
        else:
            native.adam_step(ours, grads, native_adam)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        for key in ("exp_avg", "exp_avg_sq"):  # within 1e-5 of the largest moment
            got, want = native_adam.state[a][key], torch_adam.state[b][key]
            assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item(), key
        assert native_adam.state[a]["step"].item() == torch_adam.state[b]["step"].item() == 40
    resumed = training.make_optimizer("adam", ours, 3e-3)
    resumed.load_state_dict(native_adam.state_dict())
    for p in ours:
        p.grad = torch.ones_like(p)
    for p in reference:
        p.grad = torch.ones_like(p)
    resumed.step()
    torch_adam.step()
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
