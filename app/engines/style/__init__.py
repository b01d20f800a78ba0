"""Neural style transfer (Gatys, Ecker & Bethge 2016) as an optimisation over pixels.

Pure PyTorch: tensors in, tensors out, progress through a callback, cancellation through a
predicate checked every step. Images are uint8 [H, W, 3] RGB tensors on the CPU.

Modules: `options` (settings and result types), `space` (VGG input encodings), `shapes`
(sizes and batching keys), `colour` (colour preservation), `cache` (Gram cache),
`targets` (losses and targets) and `batch` (the optimisation loop).
"""

from app.engines.style.batch import StyleBatch, StyleJob, stylize, stylize_batch, vgg_layers
from app.engines.style.cache import GramCache
from app.engines.style.colour import YCBCR, keep_luminance, match_color
from app.engines.style.options import (
    Cancelled,
    Init,
    Losses,
    Optimizer,
    Precision,
    PreserveColor,
    Progress,
    StyleOptions,
    StyleResult,
)
from app.engines.style.shapes import (
    MIN_SIDE,
    batch_key,
    compute_shape,
    fits,
    output_shape,
    resize_long_side,
)
from app.engines.style.space import CAFFE, IMAGENET, InputSpace, input_space
from app.engines.style.targets import (
    StyleTargets,
    batch_losses,
    features,
    gram,
    initial_image,
    losses,
)

__all__ = [
    "CAFFE",
    "IMAGENET",
    "MIN_SIDE",
    "YCBCR",
    "Cancelled",
    "GramCache",
    "Init",
    "InputSpace",
    "Losses",
    "Optimizer",
    "Precision",
    "PreserveColor",
    "Progress",
    "StyleBatch",
    "StyleJob",
    "StyleOptions",
    "StyleResult",
    "StyleTargets",
    "batch_key",
    "batch_losses",
    "compute_shape",
    "features",
    "fits",
    "gram",
    "initial_image",
    "input_space",
    "keep_luminance",
    "losses",
    "match_color",
    "output_shape",
    "resize_long_side",
    "stylize",
    "stylize_batch",
    "vgg_layers",
]
