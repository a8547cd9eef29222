//! OpenAPI pieces shared by the gateway's and the control plane's documents (feature
//! `openapi`).
//!
//! [`StandardErrors`] adds to every API operation the catalog errors it can answer with, from
//! what the operation is (its path, method, parameters, body, security), so that they are
//! written once here instead of on every handler, and no operation forgets `429` or `415`.
//! A handler's own, more specific description of a status is kept.

use utoipa::Modify;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::{ContentBuilder, ObjectBuilder, OpenApi, Ref, RefOr, ResponseBuilder, Type};

/// Adds the standard error responses (`ErrorBody`) to every operation under `/api/`,
/// `/widget/v1/` and `/realtime/v1`:
///
/// | status | code | added to |
/// |---|---|---|
/// | 400 | `invalid_payload` | operations with parameters or a body |
/// | 401 | `unauthorized` | every API operation (not the socket upgrade: it authenticates in-band) |
/// | 403 | `forbidden`, `project_suspended`, `quota_exceeded` | the Client and Widget APIs |
/// | 404 | `not_found` | operations with path parameters, and the Widget API |
/// | 409 | `conflict` | `POST`, `PUT`, `PATCH` |
/// | 413, 415 | `payload_too_large`, `unsupported_media_type` | operations with a body |
/// | 422 | `validation_failed` | operations with a body or query parameters |
/// | 429 | `rate_limited` (with `Retry-After` and `RateLimit-*`) | every API operation |
/// | 503 | `unavailable`, `shutting_down` | every API operation |
pub struct StandardErrors;

impl Modify for StandardErrors {
    fn modify(&self, openapi: &mut OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let client_or_widget = path.starts_with("/api/v1/") || path.starts_with("/widget/v1/");
            let socket = path == "/realtime/v1";
            if !(client_or_widget || socket || path.starts_with("/api/")) {
                continue;
            }
            for (method, op) in [
                ("get", &mut item.get),
                ("put", &mut item.put),
                ("post", &mut item.post),
                ("delete", &mut item.delete),
                ("patch", &mut item.patch),
            ] {
                if let Some(op) = op {
                    add(
                        op,
                        method,
                        path.starts_with("/widget/v1/"),
                        client_or_widget,
                        socket,
                    );
                }
            }
        }
    }
}

fn add(op: &mut Operation, method: &str, widget: bool, client_or_widget: bool, socket: bool) {
    let params = op.parameters.as_deref().unwrap_or_default();
    let has_path = params.iter().any(|p| p.parameter_in == ParameterIn::Path);
    let has_query = params.iter().any(|p| p.parameter_in == ParameterIn::Query);
    let has_body = op.request_body.is_some();
    let writes = matches!(method, "post" | "put" | "patch");
    let mut wanted: Vec<(u16, &str)> = Vec::new();
    if has_body || !params.is_empty() {
        wanted.push((400, "invalid_payload: malformed JSON, a body that is not a JSON object, an unknown or mistyped field (named in the message), or an invalid id"));
    }
    if !socket {
        wanted.push((
            401,
            "unauthorized: missing, malformed, expired or revoked credential",
        ));
    }
    if client_or_widget {
        wanted.push((
            403,
            "forbidden (scope, credential kind, origin), project_suspended, or quota_exceeded (a change past a limit of the project's plan; the message names the limit and its reset time)",
        ));
    }
    if has_path || widget {
        wanted.push((
            404,
            "not_found: missing, or another project's (the same answer)",
        ));
    }
    if writes && !socket {
        wanted.push((
            409,
            "conflict: the resource or idempotency key is already used",
        ));
    }
    if has_body {
        wanted.push((413, "payload_too_large: the body is larger than allowed"));
        wanted.push((
            415,
            "unsupported_media_type: the body must be application/json",
        ));
    }
    if has_body || has_query {
        wanted.push((
            422,
            "validation_failed: a field breaks a rule (length, format, range)",
        ));
    }
    wanted.push((
        429,
        "rate_limited: too many requests; retry after Retry-After seconds",
    ));
    wanted.push((503, "unavailable or shutting_down: retry later"));
    for (status, description) in wanted {
        op.responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::T(error_response(status, description)));
    }
}

fn error_response(status: u16, description: &str) -> utoipa::openapi::Response {
    let mut r = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
    );
    if status == 429 {
        let int = || {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .build()
        };
        for (name, what) in [
            ("Retry-After", "seconds to wait before retrying"),
            ("RateLimit-Limit", "requests the bucket holds when full"),
            ("RateLimit-Remaining", "requests left (0)"),
            ("RateLimit-Reset", "seconds until the bucket is full again"),
        ] {
            r = r.header(
                name,
                HeaderBuilder::new()
                    .schema(int())
                    .description(Some(what))
                    .build(),
            );
        }
    }
    r.build()
}
