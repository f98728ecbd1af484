"""The FRACTAL_NZ tag of CPU tensors follows the tensor and its storage, never a different view."""
import gc

import numpy as np
import torch

from ascend_moe import formats


def test_tag_follows_rewrapping_of_the_same_storage_and_view():
    cast = torch.zeros(2, 32, 64, dtype=torch.int8)
    formats.set_format(cast, "FRACTAL_NZ")
    param = torch.nn.Parameter(torch.ones(2, 32, 64, dtype=torch.int8), requires_grad=False)
    param.data = cast  # vllm-ascend's post-processing idiom
    assert formats.get_format(param) == "FRACTAL_NZ"
    assert formats.is_nz(torch.nn.Parameter(cast, requires_grad=False))


def test_tag_does_not_leak_to_other_views_copies_or_originals():
    original = torch.zeros(2, 32, 64, dtype=torch.int8)
    cast = original.clone()
    formats.set_format(cast, "FRACTAL_NZ")
    assert formats.get_format(original) == "ND"
    assert formats.get_format(cast[0]) == "ND"            # another view of the storage
    assert formats.get_format(cast.view(torch.uint8)) == "ND"  # another dtype
    assert formats.get_format(cast.clone()) == "ND"       # another storage


def test_entries_vanish_with_the_storage():
    # tagged tensors that earlier tests left in reference cycles go first (freeing one can free another:
    # collect until nothing more goes)
    while True:
        before = (len(formats._formats), len(formats._storage_formats))
        gc.collect()
        if (len(formats._formats), len(formats._storage_formats)) == before:
            break
    t = torch.zeros(4, 4)
    formats.set_format(t, "FRACTAL_NZ")
    n_obj, n_storage = len(formats._formats), len(formats._storage_formats)
    del t
    gc.collect()
    assert len(formats._formats) == n_obj - 1 and len(formats._storage_formats) == n_storage - 1


def test_numpy_arrays_are_tagged_by_object():
    a = np.zeros((16, 32), np.int8)
    assert formats.get_format(a) == "ND"
    formats.set_format(a, "FRACTAL_NZ")
    assert formats.is_nz(a) and not formats.is_nz(a.copy())


def test_device_format_hooks_are_the_one_extension_point():
    """A device type can keep formats itself; get_format/set_format (and is_nz) then go through it."""
    import torch

    class FakeDevice:
        type = "fakedev"

    class T:
        device = FakeDevice()
        def __init__(self):
            self.meta = "ND"

    store = {}
    formats.register_device_formats("fakedev", lambda t: t.meta, lambda t, f: setattr(t, "meta", f))
    try:
        t = T()
        assert formats.get_format(t) == "ND"
        formats.set_format(t, "FRACTAL_NZ")
        assert t.meta == "FRACTAL_NZ" and formats.is_nz(t) and not store
    finally:
        formats.unregister_device_formats("fakedev")
    cpu = torch.zeros(2, 2)
    assert formats.get_format(cpu) == "ND"  # CPU tensors keep the side table
