import numpy as np
import torch
import torch_npu
from scipy.special import softmax
torch.npu.config.allow_internal_format = True
def gen_input_data(E, M, K, N):
    x = torch.randint(-128, 127, (M, K), dtype=torch.int8)
    weight = torch.randint(-128, 127, (E, K, N), dtype=torch.int8)
    weightScale = torch.randn(E, N)
    xScale = torch.randn(M)
    groupList = torch.tensor([128, 128], dtype=torch.int64)
    return x, weight, weightScale, xScale, groupList
E = 2
M = 512
K = 7168
N = 4096
x, weight, weightScale, xScale, groupList = gen_input_data(E, M, K, N)
weight_npu = torch_npu.npu_format_cast(weight.npu(), 29)
output0_npu, output1_npu = torch_npu.npu_grouped_matmul_swiglu_quant_v2(x.npu(), [weight_npu], [weightScale.npu()], xScale.npu(), groupList.npu())
