"""Module registration, traversal, state_dict / load_state_dict and train/eval propagation."""
import numpy as np
import pytest

from bitnet import Parameter, Tensor, nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = Parameter(np.full(3, 2.0, np.float32))
        self.inner = nn.Dense(3, 2, rng=0)
        self.register_buffer("count", np.zeros(1, np.int64))
        self.plain = Tensor(np.ones(3))  # a plain Tensor is an attribute, not a parameter
        self.note = "hello"

    def forward(self, x):
        return self.inner(x * self.scale)


def make_net():
    return nn.Sequential(
        nn.Dense(4, 3, rng=1),
        nn.Sequential(nn.Dense(3, 3, rng=2), nn.ReLU(), nn.BatchNorm1d(3)),
        nn.Dense(3, 2, bias=False, rng=3),
    )


def test_registration_by_assignment():
    b = Block()
    assert list(b._parameters) == ["scale"]
    assert list(b._modules) == ["inner"]
    assert list(b._buffers) == ["count"]
    assert [n for n, _ in b.named_parameters()] == ["scale", "inner.weight", "inner.bias"]
    assert [n for n, _ in b.named_buffers()] == ["count"]
    assert [n for n, _ in b.named_modules()] == ["", "inner"]
    assert isinstance(b.plain, Tensor) and b.note == "hello"
    assert b.num_parameters() == 3 + 6 + 2
    # re-assigning: a Parameter slot takes None or a Parameter, not a plain value
    b.scale = None
    assert [n for n, _ in b.named_parameters()] == ["inner.weight", "inner.bias"]
    b.scale = Parameter(np.ones(3))
    with pytest.raises(TypeError, match="registered Parameter"):
        b.scale = np.ones(3)
    # assigning an array to a buffer name replaces the buffer
    b.count = np.array([5])
    assert b.state_dict()["count"].tolist() == [5]
    del b.inner
    assert "inner" not in dict(b.named_children())


def test_module_without_super_init_fails_clearly():
    class Bad(nn.Module):
        def __init__(self):
            self.w = Parameter(np.ones(2))

    with pytest.raises(RuntimeError, match="super"):
        Bad()


def test_named_parameters_in_nested_sequential():
    net = make_net()
    assert [n for n, _ in net.named_parameters()] == [
        "0.weight", "0.bias", "1.0.weight", "1.0.bias", "1.2.weight", "1.2.bias", "2.weight"]
    assert net[1][2] is dict(net.named_modules())["1.2"]
    shapes = {n: p.shape for n, p in net.named_parameters()}
    assert shapes["1.0.weight"] == (3, 3) and shapes["2.weight"] == (2, 3)
    # a shared module is listed once
    d = nn.Dense(2, 2, rng=0)
    shared = nn.Sequential(d, nn.ReLU(), d)
    assert [n for n, _ in shared.named_parameters()] == ["0.weight", "0.bias"]


def test_state_dict_keys_and_copies():
    net = make_net()
    sd = net.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "1.0.weight", "1.0.bias", "1.2.weight", "1.2.bias",
                        "1.2.running_mean", "1.2.running_var", "2.weight"]
    before = {k: v.copy() for k, v in sd.items()}
    for v in sd.values():
        v[...] = 123  # mutate every returned array
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert not np.shares_memory(sd["0.weight"], net[0].weight.data)


def _snapshot(net):
    return {k: v.copy() for k, v in net.state_dict().items()}


def test_load_state_dict_strict_reports_all_problems_and_changes_nothing():
    net = make_net()
    before = _snapshot(net)
    bad = make_net().state_dict()
    for v in bad.values():
        v += 1.0  # matching keys carry different values: a partial load would show
    del bad["1.0.bias"], bad["1.2.running_var"]                  # missing
    bad["3.weight"] = np.zeros((2, 2))                             # unexpected
    bad["extra_buffer"] = np.zeros(1)                              # unexpected
    bad["2.weight"] = np.zeros((3, 3), np.float32)                 # mis-shaped
    with pytest.raises(nn.StateDictError) as exc:
        net.load_state_dict(bad, strict=True)
    msg = str(exc.value)
    assert "missing" in msg and "1.0.bias" in msg and "1.2.running_var" in msg
    assert "unexpected" in msg and "3.weight" in msg and "extra_buffer" in msg
    assert "shape" in msg and "2.weight" in msg and "(2, 3)" in msg and "(3, 3)" in msg
    assert isinstance(exc.value, KeyError)
    after = _snapshot(net)
    assert list(after) == list(before)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)


def test_load_state_dict_non_strict_loads_matching_keys():
    net, src = make_net(), make_net()
    for p in src.parameters():
        p.data[...] = np.random.default_rng(0).standard_normal(p.shape)
    src[1][2].running_mean[...] = 0.25
    sd = src.state_dict()
    del sd["0.bias"]
    sd["nope.weight"] = np.ones(3)
    old_bias = net[0].bias.data.copy()
    missing, unexpected = net.load_state_dict(sd, strict=False)
    assert missing == ["0.bias"] and unexpected == ["nope.weight"]
    np.testing.assert_array_equal(net[0].bias.data, old_bias)
    for k, v in sd.items():
        if k != "nope.weight":
            np.testing.assert_array_equal(net.state_dict()[k], v, err_msg=k)
    # the loaded arrays are copies, not aliases of the source
    sd["0.weight"][...] = 7
    assert not (net[0].weight.data == 7).any()
    # mis-shaped keys are an error even when not strict
    with pytest.raises(nn.StateDictError, match="2.weight"):
        net.load_state_dict({"2.weight": np.zeros((1, 1))}, strict=False)


def test_state_dict_round_trip_gives_identical_outputs():
    a, b = make_net(), make_net()
    for p in b.parameters():
        p.data[...] = 0.5
    a.eval(), b.eval()
    x = Tensor(np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32))
    assert not np.allclose(a(x).data, b(x).data)
    assert b.load_state_dict(a.state_dict()) == ([], [])
    np.testing.assert_array_equal(a(x).data, b(x).data)
    assert b[0].weight.dtype == np.float32


def test_train_eval_propagate():
    net = make_net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net[1].train()
    assert net[1][2].training and not net.training and not net[0].training
    net.train()
    assert all(m.training for m in net.modules())
    net.train(False)
    assert not any(m.training for m in net.modules())


def test_zero_grad_and_parameters_get_grads():
    net = make_net()
    x = Tensor(np.random.default_rng(2).standard_normal((6, 4)).astype(np.float32))
    net(x).sum().backward()
    for n, p in net.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape and p.grad.dtype == np.float32, n
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_sequential_slicing_and_repr():
    net = make_net()
    head = net[:2]
    assert isinstance(head, nn.Sequential) and len(head) == 2 and head[0] is net[0]
    r = repr(net)
    assert "Dense(4, 3, bias=True)" in r and "BatchNorm1d(3" in r
