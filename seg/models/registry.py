"""Which heads exist: the one registry of head names, native and smp.

A head name a user writes (``model.head`` in a config, ``seg.compare --heads``, ``seg.bench --heads``,
``seg.convert --head``, ``build_model(head=...)``) is resolved here and nowhere else: :func:`get_head` returns its
:class:`HeadSpec` (builder, typed arguments, output strides, recipe defaults) or raises the one "unknown head"
error, listing the valid names. Callers never test name prefixes themselves.

* Native heads: ``seg.models.heads.HEADS`` (``fcn``, ``ccnet``, ``danet`` ...), built on
  :class:`~seg.models.backbone.TimmBackbone` with the auxiliary FCN head; output stride 8, 16 or 32 (the
  recipe's: 8, UPerNet 32).
* smp architectures: ``smp:<Architecture>`` for every architecture of the installed segmentation_models_pytorch
  (:mod:`seg.models.smp`, the adapter), on the same timm backbone; no auxiliary head; the output strides the
  architecture supports.

Register a head of your own by adding its class to ``HEADS`` (``seg/models/heads/__init__.py``): its typed
constructor arguments become ``model.head_kwargs``, and it is a choice of every command.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

from .heads import HEADS
from .smp import SMP_HEADS, backbone_error, default_output_stride, smp_signature, supported_output_strides

__all__ = ["HeadSpec", "all_head_names", "get_head", "head_signature", "recipe_output_stride"]

#: Native heads without an mmsegmentation counterpart (``seg.convert`` cannot read a checkpoint for them).
NO_MMSEG = frozenset({"axial"})


@dataclass(frozen=True)
class HeadSpec:
    """What seg knows about one head name.

    Attributes:
        name: the name configs use (``'ccnet'``, ``'smp:Unet'``).
        builder: the class whose keyword parameters (minus ``supplied``) are the head's ``model.head_kwargs``.
        supplied: the parameters seg fills itself (channels in, class count; smp: encoder, weights ...).
        native: a seg head (True) or an smp architecture (False).
        output_strides: the backbone output strides it can run at.
        recipe_output_stride: the one it runs at when nothing says otherwise (``seg.bench``, ``seg.compare``).
        aux: whether it trains with the auxiliary FCN head by default.
        mmseg: whether ``seg.convert mmseg`` can read an mmsegmentation checkpoint of it.
    """

    name: str
    builder: Callable[..., Any]
    supplied: frozenset[str]
    native: bool
    output_strides: tuple[int, ...]
    recipe_output_stride: int
    aux: bool
    mmseg: bool

    def check(self, backbone: str | None = None, output_stride: int | None = None) -> None:
        """Raise a ``ValueError`` naming the value and what to set instead if this head cannot run at
        ``output_stride`` or on timm model ``backbone`` (checked before anything is built)."""
        if output_stride is not None and output_stride not in self.output_strides:
            if self.output_strides == (32,):
                why = (
                    f"{self.name} decodes from the undilated encoder (its decoder reads the stride 2 to 32 "
                    "features), so it supports only output_stride=32"
                )
            else:
                why = f"{self.name} supports output_stride {' or '.join(map(str, self.output_strides))}"
            raise ValueError(
                f"model.output_stride={output_stride}: {why}. Set --model.output_stride="
                f"{self.recipe_output_stride} (its default)."
            )
        if backbone is not None and not self.native:
            why = backbone_error(self.builder, self.name, backbone)
            if why:
                raise ValueError(f"model.backbone={backbone!r}: {why}")

    def backbone_error(self, backbone: str) -> str | None:
        """Why this head cannot be built on timm model ``backbone`` (``seg.bench`` skips it with this), or None."""
        return None if self.native else backbone_error(self.builder, self.name, backbone)


def _native(name: str) -> HeadSpec:
    cls = HEADS[name]
    stride = int(getattr(cls, "recipe_output_stride", 8))
    return HeadSpec(
        name=name,
        builder=cls,
        supplied=frozenset({"in_channels", "num_classes"}),
        native=True,
        output_strides=(8, 16, 32),
        recipe_output_stride=stride,
        aux=True,
        mmseg=name not in NO_MMSEG,
    )


def _smp(name: str) -> HeadSpec:
    cls = SMP_HEADS[name]
    return HeadSpec(
        name=name,
        builder=cls,
        supplied=smp_signature(cls),
        native=False,
        output_strides=supported_output_strides(cls),
        recipe_output_stride=default_output_stride(cls),
        aux=False,
        mmseg=False,
    )


def all_head_names() -> tuple[str, ...]:
    """Every head :func:`seg.models.build_model` builds: the native ones, then smp's (``'smp:Unet'`` ...)."""
    return (*HEADS, *SMP_HEADS)


def get_head(name: str) -> HeadSpec:
    """The :class:`HeadSpec` of head ``name``; an unknown name raises a ``ValueError`` listing the valid ones
    (and the closest matches)."""
    if isinstance(name, str) and name in HEADS:
        return _native(name)
    if isinstance(name, str) and name in SMP_HEADS:
        return _smp(name)
    names = all_head_names()
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
    raise ValueError(
        f"Unknown head {name!r}. Valid heads: {', '.join(names)}"
        + (f". Did you mean {' or '.join(close)}?" if close else "")
    )


def head_signature(name: str) -> tuple[Callable[..., Any], frozenset[str]]:
    """``(builder, supplied)``: the ``head_kwargs`` head ``name`` accepts are the named keyword parameters of
    ``builder`` except ``supplied``. The CLI types ``model.head_kwargs`` from it (an smp class's ``**kwargs`` are
    timm encoder arguments: they go in ``model.backbone_kwargs``)."""
    spec = get_head(name)
    return spec.builder, spec.supplied


def recipe_output_stride(name: str) -> int:
    """The output stride head ``name`` runs at when no config says otherwise: 8 for the "-D8" heads, UPerNet 32,
    an smp architecture's own default."""
    return get_head(name).recipe_output_stride


def config_overrides(name: str, output_stride: int) -> dict[str, Any]:
    """The model settings head ``name`` needs on a config written for the native heads (``seg.compare`` trains
    every head on one config): nothing for a native head; an smp architecture takes its own defaults instead of
    the config's ``head_kwargs``, no aux head, and the config's output stride if it supports it, else its own."""
    spec = get_head(name)
    if spec.native:
        return {}
    stride = output_stride if output_stride in spec.output_strides else spec.recipe_output_stride
    return {"head_kwargs": {}, "aux": False, "output_stride": stride}
