"""RateLimitPolicy -> the rate limit filters of the inbound and gateway connection managers:
the buckets, the wire's descriptors, and the bodies of the 429s."""

from __future__ import annotations

from dataclasses import replace

import pytest
import re2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format

from pilotfish.load import load_texts
from pilotfish.model.proxy import ProxyNode
from pilotfish.model.rate_limits import PathSelector, RateLimitSettings
from pilotfish.model.resources import MeshConfig
from pilotfish.model.services import MeshView
from pilotfish.translate.listeners import build_gateway_listeners, build_inbound_listener
from pilotfish.translate.rate_limits import (
    LOCAL_RATE_LIMIT_FILTER_NAME,
    RATE_LIMIT_FILTER_NAME,
    path_pattern,
)

WORKLOADS = """
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {name: backend}
spec: {service: backend, port: 8080, command: [app]}
---
apiVersion: pilotfish.io/v1alpha1
kind: Workload
metadata: {name: other}
spec: {service: other, port: 8080, command: [app]}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 18080, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: other-gw}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 18081, name: http, protocol: HTTP}, hosts: ["*"]}]
---
"""
BACKEND = ProxyNode(
    id="backend-0", service="backend", inbound_port=15006, app_port=18000, outbound_port=15001
)
GATEWAY = ProxyNode(id="ingress-0", kind="gateway", labels={"istio": "ingressgateway"})


def config_with(
    policy_spec: str, settings: RateLimitSettings | None = None, extra: str = ""
) -> MeshView:
    text = (
        WORKLOADS
        + "apiVersion: pilotfish.io/v1alpha1\nkind: RateLimitPolicy\n"
        + "metadata: {name: limits}\nspec:\n"
        + "\n".join("  " + line for line in policy_spec.strip("\n").split("\n"))
        + "\n"
        + extra
    )
    result = load_texts([("mesh.yaml", text)])
    assert result.config is not None, result.diagnostics
    config: MeshConfig = result.config
    if settings is not None:
        config = replace(config, mesh=replace(config.mesh, rate_limit=settings))
    return MeshView(config=config, services={}, endpoints={})


def managers(listener: listener_pb2.Listener | None) -> list[hcm_pb2.HttpConnectionManager]:
    assert listener is not None
    found = []
    for chain in listener.filter_chains:
        manager = hcm_pb2.HttpConnectionManager()
        chain.filters[0].typed_config.Unpack(manager)
        found.append(manager)
    return found


def local_filters(
    manager: hcm_pb2.HttpConnectionManager,
) -> list[local_rate_limit_pb2.LocalRateLimit]:
    found = []
    for http_filter in manager.http_filters:
        if http_filter.name.startswith(LOCAL_RATE_LIMIT_FILTER_NAME):
            config = local_rate_limit_pb2.LocalRateLimit()
            http_filter.typed_config.Unpack(config)
            found.append(config)
    return found


def global_filter(manager: hcm_pb2.HttpConnectionManager) -> rate_limit_pb2.RateLimit | None:
    for http_filter in manager.http_filters:
        if http_filter.name == RATE_LIMIT_FILTER_NAME:
            config = rate_limit_pb2.RateLimit()
            http_filter.typed_config.Unpack(config)
            return config
    return None


LOCAL_EVERY_REQUEST = """
targetRef: {kind: Service, name: backend}
local:
  rules:
  - limit: {requests: 100, unit: Second}
"""


def test_a_rule_without_selectors_is_a_bucket_for_every_request_on_each_inbound_chain() -> None:
    found = managers(build_inbound_listener(config_with(LOCAL_EVERY_REQUEST), BACKEND))
    assert len(found) == 2  # PERMISSIVE: mTLS and plaintext, each with its own bucket
    for manager in found:
        (config,) = local_filters(manager)
        assert config.token_bucket.max_tokens == 100
        assert config.token_bucket.tokens_per_fill.value == 100
        assert config.token_bucket.fill_interval.seconds == 1
        # Unset, both are 0%: the filter would count nothing and refuse nothing.
        assert config.filter_enabled.default_value.numerator == 100
        assert config.filter_enforced.default_value.numerator == 100
        assert config.enable_x_ratelimit_headers == ratelimit_pb2.DRAFT_VERSION_03
        assert config.rate_limited_as_resource_exhausted  # gRPC callers: RESOURCE_EXHAUSTED
        (header,) = config.response_headers_to_add
        assert (header.header.key, header.header.value) == (
            "x-pilotfish-ratelimit",
            "default/limits/local/0",
        )
        assert not config.descriptors and not config.rate_limits


def test_the_filter_comes_after_security_and_before_the_router() -> None:
    spec = LOCAL_EVERY_REQUEST
    text_policy = """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin}
spec:
  selector: {matchLabels: {}}
  action: DENY
  rules: [{to: [{operation: {paths: [/admin]}}]}]
"""
    view = config_with(spec, extra=text_policy)
    (manager, *_) = managers(build_inbound_listener(view, BACKEND))
    names = [f.name for f in manager.http_filters]
    limit = names.index(f"{LOCAL_RATE_LIMIT_FILTER_NAME}/default/limits/local/0")
    assert names.index("envoy.filters.http.rbac") < limit < names.index("envoy.filters.http.router")


def test_no_policy_no_filter_and_other_services_are_untouched() -> None:
    view = config_with(LOCAL_EVERY_REQUEST)
    other = replace(BACKEND, id="other-0", service="other")
    for manager in managers(build_inbound_listener(view, other)):
        assert local_filters(manager) == []
        assert global_filter(manager) is None
    for manager in managers(build_gateway_listeners(view, GATEWAY)[0]):
        assert local_filters(manager) == []


def test_a_distinct_header_is_a_wildcard_descriptor_with_its_own_buckets() -> None:
    view = config_with("""
targetRef: {kind: Service, name: backend}
local:
  rules:
  - clientSelectors: [{headers: [{name: x-user, type: Distinct}]}]
    limit: {requests: 3, unit: Minute}
""")
    (manager, _) = managers(build_inbound_listener(view, BACKEND))
    (config,) = local_filters(manager)
    assert not config.HasField("token_bucket")
    assert config.always_consume_default_token_bucket.value is False
    assert config.max_dynamic_descriptors.value > 0
    (descriptor,) = config.descriptors
    assert [(e.key, e.value) for e in descriptor.entries] == [
        ("pilotfish_rule", "default/limits/local/0"),
        ("header:x-user", ""),
    ]
    assert descriptor.token_bucket.max_tokens == 3
    assert descriptor.token_bucket.fill_interval.seconds == 60
    (limits,) = config.rate_limits
    assert [a.WhichOneof("action_specifier") for a in limits.actions] == [
        "generic_key",
        "request_headers",
    ]


def test_an_exact_cidr_is_a_fixed_local_entry_and_a_distinct_one_a_wildcard() -> None:
    view = config_with("""
targetRef: {kind: Service, name: backend}
local:
  rules:
  - clientSelectors: [{sourceCIDR: {value: 10.0.0.0/8}}]
    limit: {requests: 3, unit: Second}
  - clientSelectors: [{sourceCIDR: {type: Distinct, value: "::/64"}}]
    limit: {requests: 3, unit: Second}
""")
    (manager, _) = managers(build_inbound_listener(view, BACKEND))
    exact, distinct = local_filters(manager)
    assert [(e.key, e.value) for e in exact.descriptors[0].entries][1] == (
        "masked_remote_address",
        "10.0.0.0/8",
    )
    assert not exact.HasField("max_dynamic_descriptors")
    masked = exact.rate_limits[0].actions[1].masked_remote_address
    assert (masked.v4_prefix_mask_len.value, masked.v6_prefix_mask_len.value) == (8, 128)
    assert [(e.key, e.value) for e in distinct.descriptors[0].entries][1] == (
        "masked_remote_address",
        "",
    )
    masked = distinct.rate_limits[0].actions[1].masked_remote_address
    assert (masked.v4_prefix_mask_len.value, masked.v6_prefix_mask_len.value) == (32, 64)


GLOBAL = """
targetRef: {kind: Service, name: backend}
global:
  rules:
  - limit: {requests: 1000, unit: Hour}
  - clientSelectors:
    - headers:
      - {name: x-user, type: Distinct}
      - {name: x-plan, value: free, invert: true}
      sourceCIDR: {value: 10.0.0.0/8}
      path: {value: /api}
    - headers: [{name: x-tier, type: RegularExpression, value: "gold|silver"}]
    limit: {requests: 10, unit: Minute}
"""


def test_global_rules_produce_exactly_the_descriptors_of_the_wire() -> None:
    view = config_with(GLOBAL)
    (manager, _) = managers(build_inbound_listener(view, BACKEND))
    config = global_filter(manager)
    assert config is not None
    assert local_filters(manager) == []
    every, selected = (
        [json_format.MessageToDict(a) for a in limits.actions] for limits in config.rate_limits
    )
    assert every == [
        {
            "genericKey": {
                "descriptorKey": "pilotfish_rule",
                "descriptorValue": "default/limits/global/0",
            }
        }
    ]
    assert selected == [
        {
            "genericKey": {
                "descriptorKey": "pilotfish_rule",
                "descriptorValue": "default/limits/global/1",
            }
        },
        {"requestHeaders": {"headerName": "x-user", "descriptorKey": "header:x-user"}},
        {
            "headerValueMatch": {
                "descriptorKey": "header_match",
                "descriptorValue": "x-plan",
                "headers": [
                    {"name": "x-plan", "invertMatch": True, "stringMatch": {"exact": "free"}}
                ],
            }
        },
        {"maskedRemoteAddress": {"v4PrefixMaskLen": 8, "v6PrefixMaskLen": 128}},
        {
            "headerValueMatch": {
                "descriptorKey": "path",
                "descriptorValue": "/api",
                "headers": [
                    {
                        "name": ":path",
                        "stringMatch": {
                            "safeRegex": {"regex": path_pattern(PathSelector("PathPrefix", "/api"))}
                        },
                    }
                ],
            }
        },
        {
            "headerValueMatch": {
                "descriptorKey": "header_match",
                "descriptorValue": "x-tier",
                "headers": [
                    {"name": "x-tier", "stringMatch": {"safeRegex": {"regex": "gold|silver"}}}
                ],
            }
        },
    ]


def test_the_global_filter_asks_the_control_plane_with_the_mesh_settings() -> None:
    view = config_with(GLOBAL, RateLimitSettings(failure_mode="deny", timeout=0.05))
    (manager, _) = managers(build_inbound_listener(view, BACKEND))
    config = global_filter(manager)
    assert config is not None
    assert config.domain == "pilotfish"
    assert config.rate_limit_service.grpc_service.envoy_grpc.cluster_name == "xds-grpc"
    assert config.timeout.ToMilliseconds() == 50
    assert config.failure_mode_deny is True
    assert config.enable_x_ratelimit_headers == rate_limit_pb2.RateLimit.DRAFT_VERSION_03
    default = global_filter(managers(build_inbound_listener(config_with(GLOBAL), BACKEND))[0])
    assert default is not None
    assert default.timeout.ToMilliseconds() == 20
    assert default.failure_mode_deny is False


def test_a_gateway_policy_limits_only_that_gateways_listeners() -> None:
    view = config_with("""
targetRef: {kind: Gateway, name: gw}
local:
  rules:
  - limit: {requests: 5, unit: Second}
""")
    listeners = {listener.name: listener for listener in build_gateway_listeners(view, GATEWAY)}
    (limited,) = managers(listeners["gateway_18080"])
    (other,) = managers(listeners["gateway_18081"])
    assert len(local_filters(limited)) == 1
    assert local_filters(other) == []
    for manager in managers(build_inbound_listener(view, BACKEND)):
        assert local_filters(manager) == []


def test_each_rule_gets_a_body_naming_the_proxy_policy_rule_and_limit_before_telemetrys() -> None:
    view = config_with(LOCAL_EVERY_REQUEST + GLOBAL.split("\n", 2)[2])
    (manager, _) = managers(build_inbound_listener(view, BACKEND))
    bodies = [
        m.body_format_override.text_format_source.inline_string
        for m in manager.local_reply_config.mappers
    ]
    assert bodies[0] == (
        "pilotfish: backend-0 answered 429: rate limit default/limits local/0 "
        "(100 per Second) [RL]\n"
    )
    assert bodies[1] == (
        "pilotfish: backend-0 answered 429: rate limit default/limits global/0 "
        "(1000 per Hour) [RL]\n"
    )
    expression = str(manager.local_reply_config.mappers[0].filter)
    assert (
        "response.headers[\\'x-pilotfish-ratelimit\\'] == \\'default/limits/local/0\\'"
        in expression
    )
    # One per rule (1 local, 2 global) and the service's own, all before telemetry's.
    assert all("rate limit" in body for body in bodies[:4])
    assert "over limit" in bodies[3]
    assert all("%RESPONSE_CODE%" in body for body in bodies[4:])
    # Every mapper, these too, names the proxy in a header.
    assert all(m.headers_to_add for m in manager.local_reply_config.mappers)


@pytest.mark.parametrize(
    ("selector", "matching", "not_matching"),
    [
        (PathSelector("Exact", "/login"), ["/login", "/login?next=/"], ["/login/", "/logins", "/"]),
        (
            PathSelector("PathPrefix", "/api"),
            ["/api", "/api/", "/api/v1?x=1", "/api?x"],
            ["/apis", "/", "/v1/api"],
        ),
        (PathSelector("PathPrefix", "/api/"), ["/api", "/api/v1"], ["/apis"]),
        (PathSelector("PathPrefix", "/"), ["/", "/anything?q"], []),
        (
            PathSelector("RegularExpression", "/users/[0-9]+"),
            ["/users/42", "/users/7?a"],
            ["/users/x", "/users/42/x"],
        ),
        (PathSelector("Exact", "/a.b"), ["/a.b"], ["/aXb"]),
        # The user's "$" is the end of the path, before any query.
        (
            PathSelector("RegularExpression", "^/users/[0-9]+$"),
            ["/users/42", "/users/42?a=1", "/users/42?"],
            ["/users/42/x", "/users/x?1", "/users/42x?a"],
        ),
        (PathSelector("RegularExpression", r"/(a|b)\z"), ["/a?q", "/b"], ["/ab"]),
        # A "$" that is text stays text.
        (
            PathSelector("RegularExpression", r"/price\$|/cost[$]|/q\Q$\E|/c[]$]"),
            ["/price$", "/price$?x", "/cost$", "/q$?x", "/c]", "/c$"],
            ["/price", "/cost", "/cost.", "/q", "/c", "/c."],
        ),
        (PathSelector("RegularExpression", "/x[[:digit:]]$"), ["/x1?y"], ["/xa"]),
    ],
)
def test_path_patterns_match_the_path_as_envoy_full_matches_it(
    selector: PathSelector, matching: list[str], not_matching: list[str]
) -> None:
    pattern = re2.compile(path_pattern(selector))
    for path in matching:
        assert pattern.fullmatch(path), path
    for path in not_matching:
        assert not pattern.fullmatch(path), path


def test_the_descriptor_actions_are_valid_route_rate_limits() -> None:
    """The filter-level ``rate_limits`` are Envoy's route RateLimit messages."""
    view = config_with(GLOBAL)
    config = global_filter(managers(build_inbound_listener(view, BACKEND))[0])
    assert config is not None
    assert all(isinstance(limits, rc.RateLimit) for limits in config.rate_limits)
