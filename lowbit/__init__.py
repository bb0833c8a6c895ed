"""lowbit: quantization that really makes models smaller and faster, with measured reports."""
__version__ = "0.1.0"

from . import formats, kernels, recipes  # noqa: E402
from .formats import QFormat  # noqa: E402
from .comparison import compare  # noqa: E402
from .io import load, save  # noqa: E402
from .qtensor import QTensor  # noqa: E402
from .recipes import quantize  # noqa: E402
from .mixed import sensitivity  # noqa: E402

__all__ = ["QFormat", "QTensor", "compare", "formats", "kernels", "load", "quantize", "recipes", "save", "sensitivity"]
