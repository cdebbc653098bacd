"""The CA's gRPC messages, built at import from descriptors written here.

``CreateCertificate`` speaks Istio's wire API (``istio.v1.auth.IstioCertificateService``,
field numbers as in istio/api ``security/v1alpha1/ca.proto``), so istio-agent could ask us
for a certificate. The trust bundle stream is our own (``pilotfish.ca.v1``): Istio's agent
learns roots from its certificate chain and istiod's config maps instead.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2

CREATE_CERTIFICATE_METHOD = "/istio.v1.auth.IstioCertificateService/CreateCertificate"
WATCH_TRUST_BUNDLE_METHOD = "/pilotfish.ca.v1.TrustBundleService/WatchTrustBundle"
AUTHORIZATION_HEADER = "authorization"
BEARER_PREFIX = "Bearer "
# Istio's response has no room for the epoch; trailing metadata leaves its wire format alone.
ISSUER_EPOCH_TRAILER = "x-pilotfish-issuer-epoch"
# The key of ``IstioCertificateRequest.metadata`` where an agent may name its xDS node.
NODE_ID_KEY = "NodeID"

_F = descriptor_pb2.FieldDescriptorProto


def _file(name: str, package: str, dependencies: tuple[str, ...] = ()) -> Any:
    return descriptor_pb2.FileDescriptorProto(
        name=name, package=package, syntax="proto3", dependency=list(dependencies)
    )


def _field(message: Any, name: str, number: int, kind: int, repeated: bool = False) -> Any:
    label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    return message.field.add(name=name, number=number, type=kind, label=label)


def _istio_file() -> Any:
    proto = _file(
        "pilotfish/ca/istio_certificate_service.proto",
        "istio.v1.auth",
        (struct_pb2.DESCRIPTOR.name,),
    )
    request = proto.message_type.add(name="IstioCertificateRequest")
    _field(request, "csr", 1, _F.TYPE_STRING)
    _field(request, "validity_duration", 3, _F.TYPE_INT64)
    _field(request, "metadata", 4, _F.TYPE_MESSAGE).type_name = ".google.protobuf.Struct"
    response = proto.message_type.add(name="IstioCertificateResponse")
    _field(response, "cert_chain", 1, _F.TYPE_STRING, repeated=True)
    return proto


def _bundle_file() -> Any:
    proto = _file("pilotfish/ca/trust_bundle.proto", "pilotfish.ca.v1")
    proto.message_type.add(name="WatchTrustBundleRequest")
    bundle = proto.message_type.add(name="TrustBundle")
    _field(bundle, "roots", 1, _F.TYPE_STRING, repeated=True)
    _field(bundle, "issuer_epoch", 2, _F.TYPE_INT64)
    return proto


def _classes() -> dict[str, Any]:
    # The default pool already holds google/protobuf/struct.proto, so ``metadata`` is the
    # ordinary Struct class with its helpers.
    pool = descriptor_pool.Default()
    classes: dict[str, Any] = {}
    for proto in (_istio_file(), _bundle_file()):
        try:
            file = pool.FindFileByName(proto.name)
        except KeyError:
            pool.Add(proto)
            file = pool.FindFileByName(proto.name)
        for name in proto.message_type:
            descriptor = file.message_types_by_name[name.name]
            classes[name.name] = message_factory.GetMessageClass(descriptor)
    return classes


_CLASSES = _classes()
IstioCertificateRequest: Any = _CLASSES["IstioCertificateRequest"]
IstioCertificateResponse: Any = _CLASSES["IstioCertificateResponse"]
WatchTrustBundleRequest: Any = _CLASSES["WatchTrustBundleRequest"]
TrustBundleMessage: Any = _CLASSES["TrustBundle"]
