"""StackedRNN against plain-numpy references of the recurrences and of Keras's initialisers."""

import math

import numpy as np
import pytest
import torch

from seqcast.errors import ConfigError
from seqcast.models import CELLS, StackedRNN, build_model, keras_init_, keras_lstm_weights_to_torch


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def set_random_weights(model, rng):
    """Overwrite every parameter with N(0, 0.5²) so biases are non-zero too."""
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.from_numpy(rng.normal(0.0, 0.5, size=tuple(param.shape))))


def numpy_weights(model):
    rnn = model.rnn
    return [p.detach().double().numpy() for p in (rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)]


def torch_states(model, x):
    """Hidden (and LSTM cell) state after each timestep, from the module itself."""
    hs, cs = [], []
    with torch.no_grad():
        for t in range(1, x.shape[1] + 1):
            _, state = model.rnn(torch.from_numpy(x[:, :t]).float())
            if isinstance(state, tuple):
                hs.append(state[0][0].double().numpy())
                cs.append(state[1][0].double().numpy())
            else:
                hs.append(state[0].double().numpy())
    return hs, cs


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_lstm_matches_textbook_equations(rng):
    model = StackedRNN(3, cell="lstm", layers=1, units=4, dropout=0.0)
    set_random_weights(model, rng)
    W_ih, W_hh, b_ih, b_hh = numpy_weights(model)
    x = rng.normal(size=(2, 3, 3))

    h = np.zeros((2, 4))
    c = np.zeros((2, 4))
    hs, cs = torch_states(model, x)
    for t in range(3):
        gates = x[:, t] @ W_ih.T + b_ih + h @ W_hh.T + b_hh
        i, f, g, o = np.split(gates, 4, axis=1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        np.testing.assert_allclose(hs[t], h, atol=1e-5)
        np.testing.assert_allclose(cs[t], c, atol=1e-5)


def test_gru_matches_pytorch_formulation(rng):
    model = StackedRNN(3, cell="gru", layers=1, units=4, dropout=0.0)
    set_random_weights(model, rng)
    W_ih, W_hh, b_ih, b_hh = numpy_weights(model)
    x = rng.normal(size=(2, 3, 3))

    h = np.zeros((2, 4))
    hs, _ = torch_states(model, x)
    for t in range(3):
        xr, xz, xn = np.split(x[:, t] @ W_ih.T + b_ih, 3, axis=1)
        hr, hz, hn = np.split(h @ W_hh.T + b_hh, 3, axis=1)
        r = sigmoid(xr + hr)
        z = sigmoid(xz + hz)
        n = np.tanh(xn + r * hn)
        h = (1 - z) * n + z * h
        np.testing.assert_allclose(hs[t], h, atol=1e-5)


def test_relu_rnn_matches_equations(rng):
    model = StackedRNN(3, cell="rnn", layers=1, units=4, dropout=0.0, nonlinearity="relu")
    set_random_weights(model, rng)
    W_ih, W_hh, b_ih, b_hh = numpy_weights(model)
    x = rng.normal(size=(2, 3, 3))

    h = np.zeros((2, 4))
    hs, _ = torch_states(model, x)
    for t in range(3):
        h = np.maximum(0.0, x[:, t] @ W_ih.T + b_ih + h @ W_hh.T + b_hh)
        np.testing.assert_allclose(hs[t], h, atol=1e-5)
    assert (hs[-1] == 0).any(), "weights should make some units inactive, or relu is untested"


def keras_lstm_step(x_t, h, c, kernel, recurrent_kernel, bias):
    z = x_t @ kernel + h @ recurrent_kernel + bias
    i, f, cc, o = np.split(z, 4, axis=-1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(cc)
    return sigmoid(o) * np.tanh(c), c


def test_keras_weights_give_the_keras_forward_pass(rng):
    """Two Keras LSTM layers + Dense, run in numpy, equal the model holding converted weights."""
    n_features, units, horizon = 2, 5, 3
    keras_layers = []
    for input_dim in (n_features, units):
        keras_layers.append(
            (
                rng.normal(0, 0.5, size=(input_dim, 4 * units)),
                rng.normal(0, 0.5, size=(units, 4 * units)),
                rng.normal(0, 0.5, size=(4 * units,)),
            )
        )
    dense_kernel = rng.normal(size=(units, horizon))
    dense_bias = rng.normal(size=(horizon,))
    x = rng.normal(size=(4, 6, n_features))

    sequence = x
    for kernel, recurrent_kernel, bias in keras_layers:
        h = np.zeros((len(x), units))
        c = np.zeros((len(x), units))
        outputs = []
        for t in range(x.shape[1]):
            h, c = keras_lstm_step(sequence[:, t], h, c, kernel, recurrent_kernel, bias)
            outputs.append(h)
        sequence = np.stack(outputs, axis=1)
    expected = sequence[:, -1] @ dense_kernel + dense_bias

    model = StackedRNN(n_features, cell="lstm", layers=2, units=units, dropout=0.3, horizon=horizon)
    with torch.no_grad():
        for layer, arrays in enumerate(keras_layers):
            converted = keras_lstm_weights_to_torch(*arrays)
            for name, tensor in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), converted):
                getattr(model.rnn, f"{name}_l{layer}").copy_(tensor)
        model.head.weight.copy_(torch.from_numpy(dense_kernel.T))
        model.head.bias.copy_(torch.from_numpy(dense_bias))
        model.eval()
        actual = model(torch.from_numpy(x).float()).double().numpy()
    np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_keras_lstm_weights_reject_wrong_shapes():
    with pytest.raises(ConfigError, match="recurrent_kernel"):
        keras_lstm_weights_to_torch(np.zeros((2, 16)), np.zeros((4, 12)), np.zeros(16))


@pytest.mark.parametrize(("cell", "gates"), [("lstm", 4), ("gru", 3), ("rnn", 1)])
def test_keras_initialisation(cell, gates):
    units, n_features, horizon = 64, 3, 5
    model = build_model(
        n_features, cell=cell, layers=2, units=units, dropout=0.2, horizon=horizon, seed=0
    )
    for layer, input_dim in enumerate((n_features, units)):
        weight_ih = getattr(model.rnn, f"weight_ih_l{layer}").detach().double().numpy()
        weight_hh = getattr(model.rnn, f"weight_hh_l{layer}").detach().double().numpy()
        bias_ih = getattr(model.rnn, f"bias_ih_l{layer}").detach().numpy()
        bias_hh = getattr(model.rnn, f"bias_hh_l{layer}").detach().numpy()

        # Glorot on the packed kernel, not per gate (that limit would be sqrt(6/(in+units))).
        limit = math.sqrt(6 / (input_dim + gates * units))
        assert np.abs(weight_ih).max() <= limit
        assert np.abs(weight_ih).max() > 0.95 * limit
        rtol = 0.1 if weight_ih.size < 1000 else 0.04
        assert np.var(weight_ih) == pytest.approx(limit**2 / 3, rel=rtol)

        assert weight_hh.shape == (gates * units, units)
        np.testing.assert_allclose(weight_hh.T @ weight_hh, np.eye(units), atol=1e-5)

        expected_bias_ih = np.zeros(gates * units)
        if cell == "lstm":
            expected_bias_ih[units : 2 * units] = 1.0
        np.testing.assert_array_equal(bias_ih, expected_bias_ih)
        np.testing.assert_array_equal(bias_hh, 0.0)

    head = model.head.weight.detach().double().numpy()
    dense_limit = math.sqrt(6 / (units + horizon))
    assert head.shape == (horizon, units)
    assert np.abs(head).max() <= dense_limit
    assert np.var(head) == pytest.approx(dense_limit**2 / 3, rel=0.2)
    np.testing.assert_array_equal(model.head.bias.detach().numpy(), 0.0)


def test_keras_init_reapplies_defaults():
    model = build_model(2, cell="lstm", layers=1, units=4, dropout=0.0, horizon=1, seed=0)
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(5.0)
    keras_init_(model)
    assert model.rnn.bias_ih_l0[4:8].eq(1).all() and model.rnn.bias_hh_l0.eq(0).all()
    assert model.rnn.weight_ih_l0.abs().max() <= math.sqrt(6 / (2 + 16))


@pytest.mark.parametrize("cell", CELLS)
def test_output_shape(cell):
    model = StackedRNN(3, cell=cell, layers=2, units=6, dropout=0.1, horizon=4)
    assert model(torch.zeros(5, 7, 3)).shape == (5, 4)


def test_dropout_only_in_training_mode():
    model = build_model(2, cell="lstm", layers=2, units=16, dropout=0.5, horizon=3, seed=0)
    x = torch.randn(8, 5, 2)
    with torch.no_grad():
        model.train()
        first, second = model(x), model(x)
        model.eval()
        third, fourth = model(x), model(x)
    assert not torch.equal(first, second)
    assert torch.equal(third, fourth)
    assert not torch.equal(first, third)


def test_build_model_seed_is_reproducible():
    kwargs = dict(cell="gru", layers=2, units=8, dropout=0.2, horizon=1)
    a, b = build_model(3, seed=1, **kwargs), build_model(3, seed=1, **kwargs)
    c = build_model(3, seed=2, **kwargs)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb)
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cell": "transformer"}, "cell must be one of lstm, gru, rnn"),
        ({"layers": 0}, "layers must be an integer >= 1"),
        ({"units": 0}, "units must be an integer >= 1"),
        ({"units": 2.5}, "units must be an integer >= 1"),
        ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
        ({"dropout": -0.1}, r"dropout must be a number in \[0, 1\)"),
        ({"horizon": 0}, "horizon must be an integer >= 1"),
        ({"cell": "rnn", "nonlinearity": "sigmoid"}, "nonlinearity must be one of tanh, relu"),
        ({"cell": "lstm", "nonlinearity": "relu"}, "only applies to cell='rnn'"),
    ],
)
def test_invalid_configuration(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        StackedRNN(2, **kwargs)
