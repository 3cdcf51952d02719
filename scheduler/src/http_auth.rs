//! The cluster token on the head's and nodes' HTTP endpoints (the jobs API, `/metrics`): a
//! request without `Authorization: Bearer <token>` (or Basic with the token as password) gets
//! 401 before any handler runs. Use with `axum::middleware::from_fn_with_state(token,
//! require_token)`.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use manta_flight::auth::Token;

/// Lets the request through only if it presents `token` (compared in constant time).
pub async fn require_token(State(token): State<Token>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| token.accepts(v));
    if !presented {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({
                "error": "present the cluster token: Authorization: Bearer <token>"
            })),
        )
            .into_response();
    }
    next.run(request).await
}
