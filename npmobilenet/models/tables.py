"""The architectures, as the papers print them (V4: as timm's arch strings spell them): tables of
rows, decoded by `builder.build`.

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

# MobileNet V4 (Qin et al., 2024), the conv-only models, as timm's `_gen_mobilenet_v4` arch strings
# spell them (timm/models/mobilenetv3.py): timm's weights are the only published ones, and its
# strings give each expansion as a ratio e of the block's input width (the paper's appendix tables
# print the resulting widths). One row per arch string, "cn_r1_k3_s2_e1_c32" as
# ("cn", 1, 0, 3, 2, None, 32). Columns:
#   block  "cn": conv -> BN -> ReLU; "er": fused inverted bottleneck (FusedIB; timm's EdgeResidual);
#          "uir": universal inverted bottleneck (UIB; timm's UniversalInvertedResidual)
#   n      repeats (timm's r); the first of them has stride s, the rest stride 1
#   a      UIB: the start depthwise kernel before the expansion (0: none)
#   k      UIB: the middle depthwise kernel after the expansion (0: none); "cn" and "er": the
#          convolution's kernel. UIB's (a, k): IB (0, k), ConvNext (a, 0), ExtraDW (a, k), FFN (0, 0)
#   s      stride;  e  expansion ratio (None: a conv row has no expansion);  c  output channels
# Every block uses ReLU and no squeeze-and-excitation. The last stage, timm's "cn_r1_k1_s1_c960",
# is the model's 1x1 head conv (V4_HEAD), as in V2 and V3; after pooling, a 1x1 conv without bias
# to V4_LAST features, batch norm and ReLU (timm's conv_head, norm_head), then the classifier.
V4_CONV_SMALL_STEM = 32
V4_CONV_SMALL_BLOCKS = [
    # block, n, a, k, s, e,    c
    ("cn",  1, 0, 3, 2, None, 32),
    ("cn",  1, 0, 1, 1, None, 32),
    ("cn",  1, 0, 3, 2, None, 96),
    ("cn",  1, 0, 1, 1, None, 64),
    ("uir", 1, 5, 5, 2, 3,    96),    # ExtraDW
    ("uir", 4, 0, 3, 1, 2,    96),    # IB
    ("uir", 1, 3, 0, 1, 4,    96),    # ConvNext
    ("uir", 1, 3, 3, 2, 6,    128),   # ExtraDW
    ("uir", 1, 5, 5, 1, 4,    128),   # ExtraDW
    ("uir", 1, 0, 5, 1, 4,    128),   # IB
    ("uir", 1, 0, 5, 1, 3,    128),   # IB
    ("uir", 2, 0, 3, 1, 4,    128),   # IB
]

V4_CONV_MEDIUM_STEM = 32
V4_CONV_MEDIUM_BLOCKS = [
    # block, n, a, k, s, e, c
    ("er",  1, 0, 3, 2, 4, 48),
    ("uir", 1, 3, 5, 2, 4, 80),       # ExtraDW
    ("uir", 1, 3, 3, 1, 2, 80),       # ExtraDW
    ("uir", 1, 3, 5, 2, 6, 160),      # ExtraDW
    ("uir", 2, 3, 3, 1, 4, 160),      # ExtraDW
    ("uir", 1, 3, 5, 1, 4, 160),      # ExtraDW
    ("uir", 1, 3, 3, 1, 4, 160),      # ExtraDW
    ("uir", 1, 3, 0, 1, 4, 160),      # ConvNext
    ("uir", 1, 0, 0, 1, 2, 160),      # FFN
    ("uir", 1, 3, 0, 1, 4, 160),      # ConvNext
    ("uir", 1, 5, 5, 2, 6, 256),      # ExtraDW
    ("uir", 1, 5, 5, 1, 4, 256),      # ExtraDW
    ("uir", 2, 3, 5, 1, 4, 256),      # ExtraDW
    ("uir", 1, 0, 0, 1, 4, 256),      # FFN
    ("uir", 1, 3, 0, 1, 4, 256),      # ConvNext
    ("uir", 1, 3, 5, 1, 2, 256),      # ExtraDW
    ("uir", 1, 5, 5, 1, 4, 256),      # ExtraDW
    ("uir", 2, 0, 0, 1, 4, 256),      # FFN
    ("uir", 1, 5, 0, 1, 2, 256),      # ConvNext
]

V4_CONV_LARGE_STEM = 24
V4_CONV_LARGE_BLOCKS = [
    # block, n, a, k, s, e, c
    ("er",  1, 0, 3, 2, 4, 48),
    ("uir", 1, 3, 5, 2, 4, 96),       # ExtraDW
    ("uir", 1, 3, 3, 1, 4, 96),       # ExtraDW
    ("uir", 1, 3, 5, 2, 4, 192),      # ExtraDW
    ("uir", 3, 3, 3, 1, 4, 192),      # ExtraDW
    ("uir", 1, 3, 5, 1, 4, 192),      # ExtraDW
    ("uir", 5, 5, 3, 1, 4, 192),      # ExtraDW
    ("uir", 1, 3, 0, 1, 4, 192),      # ConvNext
    ("uir", 4, 5, 5, 2, 4, 512),      # ExtraDW
    ("uir", 1, 5, 0, 1, 4, 512),      # ConvNext
    ("uir", 1, 5, 3, 1, 4, 512),      # ExtraDW
    ("uir", 2, 5, 0, 1, 4, 512),      # ConvNext
    ("uir", 1, 5, 3, 1, 4, 512),      # ExtraDW
    ("uir", 1, 5, 5, 1, 4, 512),      # ExtraDW
    ("uir", 3, 5, 0, 1, 4, 512),      # ConvNext
]

V4_HEAD = 960    # timm's "cn_r1_k1_s1_c960": the 1x1 conv before pooling, scaled with the width
V4_LAST = 1280   # timm's num_features after pooling, never scaled
