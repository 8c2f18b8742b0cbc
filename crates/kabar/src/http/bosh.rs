//! XEP-0124/XEP-0206 BOSH (placeholder while being written).

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::IntoResponse;

use crate::c2s::C2s;

pub struct BoshSessions {
    _c2s: Arc<C2s>,
}

impl BoshSessions {
    pub fn new(c2s: Arc<C2s>) -> Self {
        BoshSessions { _c2s: c2s }
    }
}

pub async fn request() -> impl IntoResponse {
    StatusCode::NOT_IMPLEMENTED
}

pub async fn preflight() -> impl IntoResponse {
    StatusCode::NO_CONTENT
}
