"""``CustomResearchPipeline``: a researcher's preprocessing as a dict of parameters.

The lab's design has researchers write ``CustomResearchPipeline(my_params)`` to get their
own model's input, cached and traced like the built-in pipelines, without subclassing.
Every parameter is validated when the pipeline is built (an error names the parameter and
what was expected) and every parameter, defaults included, is in the cache key: two
configurations that could give different arrays never share a cached item.

Steps, in this order (each one off or neutral by default, except the PAD crop and resize):

=================  =========================================================================
``white_balance``  ``None`` (off), ``True`` (the paper patch ``PAPER_PATCH_BOX``), or
                   ``{"patch_box": [l, u, r, b], "min_background": 64}``: scale each channel
                   so the card's bare paper becomes neutral grey (``WhiteBalancedNNPipeline``'s
                   rule), on the whole image, before cropping
``crop_box``       ``[left, upper, right, lower]`` in pixels, or ``None`` (whole image)
``size``           ``[width, height]`` of the output, or ``None`` (no resize)
``resample``       Pillow filter for the resize: nearest, box, bilinear, hamming, bicubic,
                   lanczos
``colour_space``   ``rgb``, ``grey`` (Pillow "L", one channel), ``hsv`` (Pillow "HSV", all
                   channels 0..255) or ``ycbcr`` (Pillow "YCbCr")
``channel_order``  ``rgb`` or ``bgr`` (reversed channels, as OpenCV-trained models expect;
                   ``colour_space`` ``rgb`` only)
``normalisation``  ``none`` (0..255), ``unit`` (x / 255), ``symmetric`` (x / 127.5 - 1),
                   ``imagenet`` ((x / 255 - mean) / std with the ImageNet constants) or
                   ``{"mean": [...], "std": [...]}`` (per channel, on x / 255)
``layout``         ``hwc`` (channels last, TensorFlow/Keras) or ``chw`` (channels first,
                   PyTorch)
``dtype``          ``uint8`` (only with normalisation ``none``: lossless), ``float16`` or
                   ``float32``
=================  =========================================================================

The PAD neural-network pipeline is one configuration of it (``PAD_NN_RESEARCH_PARAMS``)::

    {"crop_box": [71, 359, 707, 849], "size": [454, 454], "resample": "bicubic",
     "colour_space": "rgb", "white_balance": None, "channel_order": "rgb",
     "normalisation": "none", "layout": "hwc", "dtype": "uint8"}

which is also the default: ``CustomResearchPipeline({})`` gives, byte for byte, the arrays of
``PADNeuralNetworkPipeline()`` (same Pillow crop and bicubic resize, same truncated-image
decoding), so a researcher can start from PAD's input and change one thing at a time. Its
cache key is derived the same way (``chain_key("pipeline", name, parameters,
code_version)``) and differs only where the pipelines differ: the name
(``custom_research`` vs ``pad_nn``) and the six parameters ``PADNeuralNetworkPipeline`` does
not have. So the two never share cached arrays even when their bytes agree: a key names how
an array was made, not only what it contains.

``tensor_spec()`` describes the output for ``CustomModelAdapter(path, preprocessing=p)``,
which then needs no ``input_spec=``.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from PIL import Image

from ..errors import InvalidInputError
from .base import PreprocessingPipeline
from .examples import PAPER_PATCH_BOX, WhiteBalancedNNPipeline
from .nn import (
    PAD_NN_CROP_BOX,
    PAD_NN_SIZE,
    RESAMPLE_FILTERS,
    crop_and_resize,
    validate_crop_box,
    validate_resample,
    validate_size,
)

if TYPE_CHECKING:
    from ..models.base import TensorSpec

__all__ = [
    "COLOUR_SPACES",
    "NORMALISATIONS",
    "PAD_NN_RESEARCH_PARAMS",
    "CustomResearchPipeline",
]

#: Colour space name -> Pillow mode.
COLOUR_SPACES: Final = {"rgb": "RGB", "grey": "L", "hsv": "HSV", "ycbcr": "YCbCr"}
#: Named normalisations (a ``{"mean", "std"}`` dict is also accepted).
NORMALISATIONS: Final = ("none", "unit", "symmetric", "imagenet")
IMAGENET_MEAN: Final = (0.485, 0.456, 0.406)
IMAGENET_STD: Final = (0.229, 0.224, 0.225)
CHANNEL_ORDERS: Final = ("rgb", "bgr")
LAYOUTS: Final = ("hwc", "chw")
DTYPES: Final = ("uint8", "float16", "float32")
DEFAULT_MIN_BACKGROUND: Final = 64

#: The PAD NN pipeline as a ``CustomResearchPipeline`` configuration (also the defaults).
PAD_NN_RESEARCH_PARAMS: Final[dict[str, Any]] = {
    "crop_box": list(PAD_NN_CROP_BOX),
    "size": list(PAD_NN_SIZE),
    "resample": "bicubic",
    "colour_space": "rgb",
    "white_balance": None,
    "channel_order": "rgb",
    "normalisation": "none",
    "layout": "hwc",
    "dtype": "uint8",
}


def _bad(parameter: str, expected: str, got: Any) -> InvalidInputError:
    return InvalidInputError(
        f"CustomResearchPipeline parameter {parameter!r} must be {expected}, got {got!r}"
    )


def _reworded(exc: InvalidInputError, parameter: str) -> InvalidInputError:
    """A shared validator's error, told as this pipeline's parameter."""
    text = str(exc).replace("NN parameter", "CustomResearchPipeline parameter")
    text = text.replace("parameter 'crop_box'", f"parameter {parameter!r}")
    text = text.replace("parameter 'size'", f"parameter {parameter!r}")
    return InvalidInputError(text)


def _choice(parameter: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.lower() not in allowed:
        raise _bad(parameter, f"one of {list(allowed)}", value)
    return value.lower()


def _floats3(parameter: str, value: Any, positive: bool) -> list[float]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 3:
        raise _bad(parameter, "3 numbers (one per channel)", value)
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(float(v)):
            raise _bad(parameter, "3 finite numbers (one per channel)", value)
        if positive and float(v) <= 0:
            raise _bad(parameter, "3 positive numbers (one per channel)", value)
        out.append(float(v))
    return out


class CustomResearchPipeline(PreprocessingPipeline):
    """A declarative, validated, parameterised pipeline (see the module docstring).

    ``CustomResearchPipeline(params)`` with ``params`` a dict, or keywords
    (``CustomResearchPipeline(size=[224, 224], layout="chw")``), or both (a key given
    twice is an error). Omitted parameters take the PAD NN values, so
    ``CustomResearchPipeline({})`` equals ``PADNeuralNetworkPipeline()`` byte for byte.
    Unknown parameter names are refused with the closest known name. The PAD NN pipeline,
    every parameter written out (``PAD_NN_RESEARCH_PARAMS``)::

        CustomResearchPipeline({
            "crop_box": [71, 359, 707, 849], "size": [454, 454], "resample": "bicubic",
            "colour_space": "rgb", "white_balance": None, "channel_order": "rgb",
            "normalisation": "none", "layout": "hwc", "dtype": "uint8",
        })

    Its cache key differs from ``PADNeuralNetworkPipeline``'s in the name
    (``custom_research``) and the six parameters that pipeline does not have.
    """

    name = "custom_research"
    code_version = "1"

    def __init__(self, params: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise InvalidInputError(
                f"CustomResearchPipeline params must be a dict of parameters, got "
                f"{type(params).__name__}; known parameters: {sorted(PAD_NN_RESEARCH_PARAMS)}"
            )
        twice = sorted(set(params) & set(kwargs))
        if twice:
            raise InvalidInputError(
                f"CustomResearchPipeline parameters {twice} given both in params and as "
                "keywords; give each once"
            )
        given = {**params, **kwargs}
        unknown = sorted(str(k) for k in given if k not in PAD_NN_RESEARCH_PARAMS)
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, PAD_NN_RESEARCH_PARAMS, n=1)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise InvalidInputError(
                f"CustomResearchPipeline: unknown parameter(s) {', '.join(hints)}; known "
                f"parameters: {sorted(PAD_NN_RESEARCH_PARAMS)}"
            )
        p = {**PAD_NN_RESEARCH_PARAMS, **given}

        self.crop_box: tuple[int, int, int, int] | None = None
        if p["crop_box"] is not None:
            try:
                self.crop_box = validate_crop_box(p["crop_box"])
            except InvalidInputError as exc:
                raise _reworded(exc, "crop_box") from None
        self.size: tuple[int, int] | None = None
        if p["size"] is not None:
            try:
                self.size = validate_size(p["size"])
            except InvalidInputError as exc:
                raise _reworded(exc, "size") from None
        try:
            self.resample = validate_resample(p["resample"])
        except InvalidInputError:
            raise _bad("resample", f"one of {sorted(RESAMPLE_FILTERS)}", p["resample"]) from None
        self.colour_space = _choice("colour_space", p["colour_space"], tuple(COLOUR_SPACES))
        self.white_balance = self._white_balance(p["white_balance"])
        self.channel_order = _choice("channel_order", p["channel_order"], CHANNEL_ORDERS)
        if self.channel_order == "bgr" and self.colour_space != "rgb":
            raise _bad("channel_order", f"'rgb' when colour_space is {self.colour_space!r} "
                       "(channels are reversed only for RGB)", p["channel_order"])
        self.normalisation = self._normalisation(p["normalisation"])
        self.layout = _choice("layout", p["layout"], LAYOUTS)
        self.dtype = _choice("dtype", p["dtype"], DTYPES)
        if self.dtype == "uint8" and self.normalisation != "none":
            raise _bad("dtype", "'float16' or 'float32' when normalisation is "
                       f"{self.normalisation!r} (normalised values are not integers 0..255)",
                       p["dtype"])
        self._balancer = (
            WhiteBalancedNNPipeline(patch_box=self.white_balance["patch_box"],
                                    min_background=self.white_balance["min_background"])
            if self.white_balance else None
        )

    # ---- validation of the structured parameters ------------------------------------
    @staticmethod
    def _white_balance(value: Any) -> dict[str, Any] | None:
        if value is None or value is False:
            return None
        if value is True:
            value = {}
        if not isinstance(value, Mapping):
            raise _bad("white_balance", "None, True, or a dict with 'patch_box' and/or "
                       "'min_background'", value)
        extra = sorted(set(value) - {"patch_box", "min_background"})
        if extra:
            raise _bad("white_balance", "a dict with only 'patch_box' and 'min_background' "
                       f"(unknown: {extra})", dict(value))
        try:
            box = list(validate_crop_box(value.get("patch_box", PAPER_PATCH_BOX)))
        except InvalidInputError:
            raise _bad("white_balance.patch_box", "4 integers left, upper, right, lower with "
                       "0 <= left < right and 0 <= upper < lower",
                       value.get("patch_box")) from None
        level = value.get("min_background", DEFAULT_MIN_BACKGROUND)
        if (isinstance(level, bool) or not isinstance(level, numbers.Integral)
                or not 1 <= int(level) <= 255):
            raise _bad("white_balance.min_background", "an integer in 1..255", level)
        return {"patch_box": box, "min_background": int(level)}

    @staticmethod
    def _normalisation(value: Any) -> str | dict[str, list[float]]:
        if isinstance(value, Mapping):
            if set(value) != {"mean", "std"}:
                raise _bad("normalisation", "one of "
                           f"{list(NORMALISATIONS)} or a dict with exactly 'mean' and 'std'",
                           dict(value))
            return {"mean": _floats3("normalisation.mean", value["mean"], positive=False),
                    "std": _floats3("normalisation.std", value["std"], positive=True)}
        if value is None:
            value = "none"
        return _choice("normalisation", value, NORMALISATIONS)

    # ---- PreprocessingPipeline --------------------------------------------------------
    def get_parameters(self) -> dict[str, Any]:
        """Every parameter, defaults included, in canonical form (the cache key's input)."""
        return {
            "crop_box": list(self.crop_box) if self.crop_box else None,
            "size": list(self.size) if self.size else None,
            "resample": self.resample,
            "colour_space": self.colour_space,
            "white_balance": dict(self.white_balance) if self.white_balance else None,
            "channel_order": self.channel_order,
            "normalisation": (dict(self.normalisation) if isinstance(self.normalisation, dict)
                              else self.normalisation),
            "layout": self.layout,
            "dtype": self.dtype,
        }

    @property
    def channels(self) -> int:
        return 1 if self.colour_space == "grey" else 3

    def _crop_resize(self, image: Image.Image) -> Image.Image | np.ndarray:
        if self.crop_box is not None and self.size is not None:
            # The very calls PADNeuralNetworkPipeline makes: identical bytes by construction.
            return crop_and_resize(image, self.crop_box, self.size, self.resample)
        if self.crop_box is not None:
            width, height = image.size
            _, _, right, lower = self.crop_box
            if right > width or lower > height:
                raise InvalidInputError(
                    f"CustomResearchPipeline parameter 'crop_box' {self.crop_box} does not fit "
                    f"inside the image of {width}x{height} (w x h)"
                )
            image = image.crop(self.crop_box)
        if self.size is not None:
            image = image.resize(self.size, RESAMPLE_FILTERS[self.resample])
        return image

    def _scaled(self, pixels: np.ndarray) -> np.ndarray:
        norm = self.normalisation
        if norm == "none":
            return pixels.astype(self.dtype, copy=False)
        x = pixels.astype(np.float32)
        if norm == "unit":
            x = x / np.float32(255.0)
        elif norm == "symmetric":
            x = x / np.float32(127.5) - np.float32(1.0)
        else:
            mean, std = ((IMAGENET_MEAN, IMAGENET_STD) if norm == "imagenet"
                         else (norm["mean"], norm["std"]))  # type: ignore[index]
            mean_a = np.asarray(mean[: self.channels], dtype=np.float32)
            std_a = np.asarray(std[: self.channels], dtype=np.float32)
            x = (x / np.float32(255.0) - mean_a) / std_a
        return x.astype(self.dtype, copy=False)

    def process_image(self, raw_image: Image.Image) -> np.ndarray:
        image = raw_image if raw_image.mode == "RGB" else raw_image.convert("RGB")
        if self._balancer is not None:
            rgb = np.asarray(image, dtype=np.float32)
            balanced = rgb * self._balancer.channel_gains(rgb).astype(np.float32)
            image = Image.fromarray(np.clip(np.rint(balanced), 0, 255).astype(np.uint8), "RGB")
        out = self._crop_resize(image)
        if self.colour_space != "rgb":
            pil = out if isinstance(out, Image.Image) else Image.fromarray(out, "RGB")
            out = pil.convert(COLOUR_SPACES[self.colour_space])
        pixels = np.asarray(out, dtype=np.uint8)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if self.channel_order == "bgr":
            pixels = pixels[:, :, ::-1]
        arr = self._scaled(pixels)
        if self.layout == "chw":
            arr = arr.transpose(2, 0, 1)
        return np.ascontiguousarray(arr)

    # ---- what a model adapter needs ---------------------------------------------------
    def output_shape(self) -> tuple[int, int, int]:
        """Shape of one output array; needs ``size`` (else it depends on the image)."""
        if self.size is None:
            raise InvalidInputError(
                "CustomResearchPipeline parameter 'size' is None, so the output shape depends "
                "on each image; set size=[width, height] or give the model an input_spec="
            )
        width, height = self.size
        return ((height, width, self.channels) if self.layout == "hwc"
                else (self.channels, height, width))

    def tensor_spec(self) -> TensorSpec:
        """The model-ready tensor this pipeline feeds: float32 from lossless uint8 storage,
        or the float dtype as stored; the layout and normalisation say how to read it."""
        from ..models.base import TensorSpec

        scale = (self.normalisation if isinstance(self.normalisation, str)
                 else "mean_std")
        scale = "raw" if scale == "none" else scale
        model_dtype = "float32" if self.dtype == "uint8" else self.dtype
        return TensorSpec(shape=self.output_shape(), dtype=model_dtype,
                          storage_dtype=self.dtype, layout="N" + self.layout.upper(),
                          scale=scale)
