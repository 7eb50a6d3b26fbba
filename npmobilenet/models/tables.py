"""The architectures, as the papers print them: tables of rows, decoded by `builder.build`.

Channel counts here are at width 1.0; the builder applies the width multiplier (in one place,
`builder.scale_channels`). Every block uses 'same' symmetric padding, as torchvision does.
"""

# MobileNet V1 paper, Table 1. After the 3x3 stem conv (stride 2, 32 channels), depthwise-separable
# blocks; the first block of each row has stride s, the rest stride 1. The paper's last row prints
# "Conv dw / s2" on a 7x7 input that stays 7x7: a misprint for s1, as every released model has it.
V1_STEM = 32
V1_BLOCKS = [
    # c,    n, s
    (64,    1, 1),
    (128,   2, 2),
    (256,   2, 2),
    (512,   6, 2),
    (1024,  2, 2),
]

# MobileNet V2 paper, Table 2: t expansion factor, c output channels, n repeats, s first stride.
V2_STEM = 32
V2_BLOCKS = [
    # t, c,   n, s
    (1, 16,  1, 1),
    (6, 24,  2, 2),
    (6, 32,  3, 2),
    (6, 64,  4, 2),
    (6, 96,  3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
V2_HEAD = 1280

# MobileNet V3 paper, Table 1 (Large): kernel, expansion size, output channels, squeeze-and-excite,
# non-linearity (RE = ReLU, HS = hard-swish), stride.
V3_LARGE_STEM = 16
V3_LARGE_BLOCKS = [
    # k, exp, out, SE,    NL,   s
    (3, 16,  16,  False, "RE", 1),
    (3, 64,  24,  False, "RE", 2),
    (3, 72,  24,  False, "RE", 1),
    (5, 72,  40,  True,  "RE", 2),
    (5, 120, 40,  True,  "RE", 1),
    (5, 120, 40,  True,  "RE", 1),
    (3, 240, 80,  False, "HS", 2),
    (3, 200, 80,  False, "HS", 1),
    (3, 184, 80,  False, "HS", 1),
    (3, 184, 80,  False, "HS", 1),
    (3, 480, 112, True,  "HS", 1),
    (3, 672, 112, True,  "HS", 1),
    (5, 672, 160, True,  "HS", 2),
    (5, 960, 160, True,  "HS", 1),
    (5, 960, 160, True,  "HS", 1),
]
V3_LARGE_LAST = 1280  # Table 1: "conv2d 1x1, NBN" after pooling, as a fully connected layer

# MobileNet V3 paper, Table 2 (Small), same columns.
V3_SMALL_STEM = 16
V3_SMALL_BLOCKS = [
    # k, exp, out, SE,    NL,   s
    (3, 16,  16,  True,  "RE", 2),
    (3, 72,  24,  False, "RE", 2),
    (3, 88,  24,  False, "RE", 1),
    (5, 96,  40,  True,  "HS", 2),
    (5, 240, 40,  True,  "HS", 1),
    (5, 240, 40,  True,  "HS", 1),
    (5, 120, 48,  True,  "HS", 1),
    (5, 144, 48,  True,  "HS", 1),
    (5, 288, 96,  True,  "HS", 2),
    (5, 576, 96,  True,  "HS", 1),
    (5, 576, 96,  True,  "HS", 1),
]
V3_SMALL_LAST = 1024

# V3: the last 1x1 conv widens the last bottleneck six-fold (Tables 1-2: 160 -> 960, 96 -> 576).
V3_HEAD_EXPANSION = 6
# V3, section 5.3: the SE bottleneck is a quarter of the expansion layer's width.
V3_SE_RATIO = 4

NONLINEARITY = {"RE": "relu", "HS": "hardswish"}
