"""The registry of the fused attention's backends and its dispatcher
(pyg_gatv2/fused/backends/__init__.py): which backend a call runs on, and
what a call that names one it cannot run on is told."""
import importlib
import re
import sys

import pytest
import torch
from _fused_cases import BACKENDS, features, random_graph, spy_on_backends

import pyg_gatv2
from pyg_gatv2.fused import backends, fused_gatv2_attention

HALF = (torch.float16, torch.bfloat16)
# The backends that can run CPU tensors of float32 here, outside Triton's
# interpreter.
CPU_FLOAT32 = ', '.join(repr(b) for b in BACKENDS)


@pytest.fixture
def not_interpreted(monkeypatch):
    """Triton's kernels compiled for a GPU, as outside the tests: not for
    CPU tensors."""
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)


def call(dtype=torch.float32, backend=None, grad=False):
    """The output of a small fused attention call, after a backward pass
    of its sum with ``grad``."""
    x_l, x_r, att, _, _ = features(6, 6, 0, 2, 3, dtype)
    out = fused_gatv2_attention(x_l, x_r, att, random_graph(6, 6, 15),
                                add_self_loops=True, backend=backend)
    if grad:
        out.float().sum().backward()
    return out


def test_names_follow_the_priority():
    assert backends.PRIORITY == ('cpp', 'triton', 'torch')
    assert backends.names() == backends.PRIORITY
    for name, backend in backends.registry().items():
        module = importlib.import_module(f'pyg_gatv2.fused.backends.{name}')
        assert module.BACKEND is backend
        assert isinstance(backend, backends.Backend)
        assert backend.name == name
        assert backends.get(name, 'test') is backend
        assert repr(backend) == (f'<fused backend {name!r}: '
                                 f'{backend.summary}>')


FLOATS = (torch.float32, torch.float64)


@pytest.mark.parametrize('name,devices,dtypes,needs_output', [
    ('cpp', ('cpu', ), FLOATS, False),
    ('triton', ('cuda', ), FLOATS + HALF, True),
    ('torch', ('cpu', 'cuda', 'mps', 'xpu'), FLOATS + HALF, True),
])
def test_each_backend_declares_what_it_runs(name, devices, dtypes,
                                            needs_output):
    backend = backends.get(name, 'test')
    assert backend.devices == devices
    assert set(backend.dtypes) == set(dtypes)
    # Only the C++ kernels sum D_i over the edges, with no need of the
    # forward output in backward.
    assert backend.needs_output == needs_output
    for dtype in dtypes:
        assert not any('it runs' in reason for reason in backend.reasons(
            torch.device(devices[0]), dtype))


def test_the_torch_backend_runs_any_device():
    backend = backends.get('torch', 'test')
    assert backend.runs_on(torch.device('meta'))
    assert backend.reasons(torch.device('meta'), torch.float16) == []


@pytest.mark.parametrize('interpreted', [False, True],
                         ids=['compiled', 'TRITON_INTERPRET=1'])
@pytest.mark.parametrize('dtype', FLOATS + HALF, ids=str)
def test_auto_choice_for_cpu_tensors(dtype, interpreted, monkeypatch):
    # The C++ kernels for float32 and float64, the torch backend for half
    # precision; never Triton, whose interpreter runs CPU tensors only
    # when asked for by name.
    if interpreted:
        monkeypatch.setenv('TRITON_INTERPRET', '1')
    else:
        monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    expected = 'cpp' if dtype in FLOATS and 'cpp' in BACKENDS else 'torch'
    cpu = torch.device('cpu')
    assert backends.select('auto', cpu, dtype, 'test').name == expected
    assert backends.select(None, cpu, dtype, 'test').name == expected
    calls = spy_on_backends(monkeypatch)
    call(dtype, grad=True)
    assert calls == [(expected, 'forward'), (expected, 'backward')]


@pytest.mark.skipif('triton' not in backends.available()
                    or torch.cuda.is_available(),
                    reason="needs triton's interpreter")
def test_triton_runs_cpu_tensors_in_its_interpreter_by_name(monkeypatch):
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    cpu = torch.device('cpu')
    assert backends.select('triton', cpu, torch.float32, 'test').name == (
        'triton')
    calls = spy_on_backends(monkeypatch)
    torch.testing.assert_close(call(backend='triton'), call(backend='torch'))
    assert calls == [('triton', 'forward'), ('torch', 'forward')]
    # And it is named among those that can run what another cannot.
    with pytest.raises(ValueError, match=r"Backends that can run "
                       r"torch\.float16 tensors on cpu: 'triton', 'torch' "
                       r"\(or 'auto'\)$"):
        backends.select('cpp', cpu, torch.float16, 'test')


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_auto_picks_triton_for_cuda_tensors():
    expected = 'triton' if 'triton' in backends.available() else 'torch'
    for dtype in FLOATS + HALF:
        assert backends.select('auto', torch.device('cuda'), dtype,
                               'test').name == expected


ERRORS = {
    'cpp_half': (
        dict(backend='cpp', dtype=torch.float16),
        r"^'fused_gatv2_attention' cannot run on the fused backend 'cpp': "
        r'it runs float32, float64, not float16\. Backends that can run '
        r"torch\.float16 tensors on cpu: 'torch' \(or 'auto'\)$"),
    'triton_cpu': (
        dict(backend='triton'),
        r"^'fused_gatv2_attention' cannot run on the fused backend "
        r"'triton': .*it runs on cuda tensors, not cpu\. Backends that can "
        rf"run torch\.float32 tensors on cpu: {CPU_FLOAT32} \(or 'auto'\)$"),
    'unknown': (
        dict(backend='cutlass'),
        r"^'fused_gatv2_attention' got fused backend 'cutlass'; choose one "
        r"of 'auto', 'cpp', 'triton', 'torch'$"),
}


@pytest.mark.parametrize('case', list(ERRORS))
def test_a_backend_that_cannot_run_the_call_says_why_and_which_can(
        case, not_interpreted):
    options, match = ERRORS[case]
    with pytest.raises(ValueError, match=match):
        call(options.get('dtype', torch.float32), options['backend'])


def test_a_device_the_backend_does_not_run_is_named():
    with pytest.raises(ValueError, match=r"'caller' cannot run on the fused "
                       r"backend 'cpp': .*it runs on cpu tensors, not meta\."
                       r" Backends that can run torch\.float64 tensors on "
                       r"meta: 'torch'"):
        backends.select('cpp', torch.device('meta'), torch.float64, 'caller')


def test_a_cpp_backend_that_was_not_built_is_reported(without_cpp_library,
                                                      not_interpreted,
                                                      monkeypatch):
    assert 'cpp' not in backends.available()
    assert 'torch' in backends.available()
    with pytest.raises(ValueError, match=r"cannot run on the fused backend "
                       r"'cpp': the C\+\+ kernels were not built \(no C\+\+ "
                       r"compiler .*'pip install \.'\)\. Backends that can "
                       r"run torch\.float32 tensors on cpu: 'torch'"):
        call(backend='cpp')
    calls = spy_on_backends(monkeypatch)
    call(grad=True)
    assert calls == [('torch', 'forward'), ('torch', 'backward')]
    with pytest.raises(ValueError, match=r"'test': the fused backend 'cpp' "
                       r'cannot run here: the C\+\+ kernels were not built'):
        backends.choose('cpp', 'test')
    assert backends.chosen() == 'auto'


def test_the_choice_is_kept_for_calls_that_name_none(monkeypatch):
    assert backends.chosen() == 'auto'
    calls = spy_on_backends(monkeypatch)
    backends.choose('torch', 'test')
    try:
        assert backends.chosen() == 'torch'
        call()
        call(backend='auto')
        with pytest.raises(ValueError, match="got fused backend 'numba'"):
            backends.choose('numba', 'test')
        assert backends.chosen() == 'torch'
    finally:
        backends.choose('auto', 'test')
    expected = 'cpp' if 'cpp' in BACKENDS else 'torch'
    assert calls == [('torch', 'forward'), (expected, 'forward')]


def test_auto_with_no_backend_for_the_dtype_is_an_error(monkeypatch):
    monkeypatch.setattr(backends, 'PRIORITY', ('cpp', ))
    backends.registry.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="'test': no fused backend "
                           'runs torch.float16 tensors on cpu'):
            backends.select('auto', torch.device('cpu'), torch.float16,
                            'test')
    finally:
        monkeypatch.undo()
        backends.registry.cache_clear()


# A backend of its own: the torch backend's kernels under another name, for
# float32 CPU tensors only, counting its passes.
FAKE_BACKEND = '''
import torch

from . import Backend
from . import torch as torch_backend


class FakeBackend(Backend):
    name = 'fake'
    summary = 'the torch kernels under another name'
    devices = ('cpu', )
    dtypes = (torch.float32, )

    def __init__(self):
        self.calls = []

    def forward(self, ops, want_alpha):
        self.calls.append('forward')
        return torch_backend.BACKEND.forward(ops, want_alpha)

    def backward(self, ops, cot, want_edge_grad, want_src_grad):
        self.calls.append('backward')
        return torch_backend.BACKEND.backward(ops, cot, want_edge_grad,
                                              want_src_grad)


BACKEND = FakeBackend()
'''


@pytest.fixture
def fake_backend(tmp_path, monkeypatch):
    """A new backend, added as the registry's documentation says: one
    module in the backends' package (here from a folder added to its path)
    and one entry, the first, in PRIORITY."""
    (tmp_path / 'fake.py').write_text(FAKE_BACKEND)
    name = f'{backends.__name__}.fake'
    with monkeypatch.context() as patch:
        patch.setattr(backends, '__path__',
                      list(backends.__path__) + [str(tmp_path)])
        patch.setattr(backends, 'PRIORITY', ('fake', ) + backends.PRIORITY)
        backends.registry.cache_clear()
        try:
            yield backends.get('fake', 'test')
        finally:
            sys.modules.pop(name, None)
            if hasattr(backends, 'fake'):
                delattr(backends, 'fake')
    backends.registry.cache_clear()


def test_a_new_backend_is_one_module_and_one_priority_entry(
        fake_backend, not_interpreted):
    assert backends.names() == ('fake', 'cpp', 'triton', 'torch')
    assert 'fake' in backends.available()
    cpu = torch.device('cpu')
    assert backends.select('auto', cpu, torch.float32, 'test') is (
        fake_backend)
    # Past what it runs, 'auto' takes the next backend.
    assert backends.select('auto', cpu, torch.float64, 'test').name == (
        BACKENDS[0])
    assert re.search(r"^fused 'fake': the torch kernels under another "
                     r'name; cpu, float32; available$',
                     pyg_gatv2.describe_backends(), re.M)

    out = call(grad=True)
    assert fake_backend.calls == ['forward', 'backward']
    torch.testing.assert_close(out, call(backend='torch'))
    with pyg_gatv2.use_backends(fused='fake'):
        with pytest.raises(ValueError, match=r"fused backend 'fake': it "
                           r'runs float32, not float64\. Backends that can '
                           r'run torch\.float64 tensors on cpu: '
                           rf'{CPU_FLOAT32}'):
            call(torch.float64)
    assert fake_backend.calls == ['forward', 'backward']
