"""Pure translation of the mesh view into Envoy xDS resources, one module per resource type."""

from __future__ import annotations

from pilotfish.translate.generators import GENERATORS, TranslationContext
from pilotfish.translate.translator import MeshTranslator, ProxyResources

__all__ = ["GENERATORS", "MeshTranslator", "ProxyResources", "TranslationContext"]
