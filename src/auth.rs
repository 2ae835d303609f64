//! The bearer token of `serve --token-file`, checked on every HTTP ingest request and gRPC
//! call before anything of the request is read.

use tonic::{Request, Status};

/// Whether an `Authorization` header value carries the configured token (`Bearer TOKEN`);
/// anything goes when no token is configured.
pub fn bearer_matches(token: Option<&str>, authorization: Option<&str>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let given = authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    constant_time_eq(given.as_bytes(), token.as_bytes())
}

/// Every gRPC call must carry `authorization: Bearer TOKEN` when a token is configured.
pub fn grpc_bearer(
    token: Option<String>,
) -> impl tonic::service::Interceptor + Clone + Send + Sync + 'static {
    move |req: Request<()>| -> Result<Request<()>, Status> {
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if bearer_matches(token.as_deref(), given) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("missing or wrong bearer token"))
        }
    }
}

/// Compares secrets in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
