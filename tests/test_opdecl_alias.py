"""The declaration's schema parser reads op-plugin's alias annotations (``Tensor(a!) self``: the op writes
into the argument) as torch's own parser does."""
import pytest
import torch

from ascend_moe.opdecl import OpDecl, parse_schema

# op-plugin op_plugin_functions.yaml, npu_grouped_matmul_add_
GMA_INPLACE = ("npu_grouped_matmul_add_(Tensor(a!) self, Tensor x, Tensor weight, Tensor group_list, *, "
               "bool transpose_x=True, bool transpose_weight=False, int group_type=2, int? group_list_type=0) "
               "-> Tensor(a!)")


@pytest.mark.parametrize("text", [GMA_INPLACE,
                                  "f(Tensor(a!)? out, Tensor(b) view, Tensor x, *, int k=1) -> Tensor(a!)"])
def test_alias_annotations_parse_as_torchs(text):
    ours = parse_schema(text)
    theirs = torch._C.parse_schema(text)
    assert [a.name for a in ours.args] == [a.name for a in theirs.arguments]
    for a, t in zip(ours.args, theirs.arguments):
        info = t.alias_info
        assert a.mutable == bool(info is not None and info.is_write), a.name
        assert (a.alias != "") == (info is not None), a.name
        assert a.optional == isinstance(t.type, torch._C.OptionalType), a.name
    # spelled back, torch reads the same schema
    assert torch._C.parse_schema(ours.spelled()) == theirs


def test_declaration_lists_what_it_writes():
    d = OpDecl(schema=GMA_INPLACE, rules="quant_ops", shape=lambda a: [], sim=lambda a, t: None)
    assert d.mutates == ("self",)
    assert d.parsed.arg("self").type == "Tensor" and d.parsed.returns == ("Tensor(a!)",)


def test_alias_on_a_non_tensor_is_refused():
    with pytest.raises(ValueError, match="unsupported type"):
        parse_schema("f(int(a!) n) -> Tensor")


def test_registered_torch_ops_declare_the_write():
    """npu_grouped_matmul_add_ (marked in op-plugin's yaml) and npu_grouped_matmul_add (not marked, but
    op-plugin's kernel writes self too) both tell torch they write self; the in-place one returns nothing
    to torch (custom ops may not return an input alias) and self to its callers."""
    import ascend_moe
    for name, returns in (("npu_grouped_matmul_add_", 0), ("npu_grouped_matmul_add", 1)):
        schema = getattr(torch.ops.ascend_moe, name).default._schema
        assert schema.arguments[0].name == "self" and schema.arguments[0].alias_info.is_write
        assert not any(a.alias_info is not None for a in schema.arguments[1:])
        assert len(schema.returns) == returns
    g = torch.Generator().manual_seed(4)
    x, w = (torch.randint(-3, 4, (10, n), generator=g).to(torch.bfloat16) for n in (4, 6))
    y = torch.zeros(2, 4, 6)
    assert ascend_moe.npu_grouped_matmul_add_(y, x, w, torch.tensor([4, 10])) is y
    # hand check of one element: y[1, 0, 0] = sum over tokens 4..9 of x[r, 0] * w[r, 0]
    assert y[1, 0, 0].item() == sum(float(x[r, 0]) * float(w[r, 0]) for r in range(4, 10))
