//! A partner's own API keys: list them, and rotate with an overlap.

use std::sync::Arc;

use chrono::Utc;
use poem::web::Data;
use poem_openapi::{payload::Json, ApiResponse, OpenApi};

use super::{
    auth::PartnerAuth,
    dto::{ApiKeyList, RotatedApiKey},
    problem::{ApiProblem, ApiResult, ProblemCode},
    ApiTags, AppState,
};
use crate::store::partners;

pub struct KeysApi;

#[derive(ApiResponse)]
pub enum RotatedResponse {
    /// The new key. Keep it: it is not shown again.
    #[oai(status = 201)]
    Created(Json<RotatedApiKey>),
}

#[derive(ApiResponse)]
pub enum ListResponse {
    #[oai(status = 200)]
    Ok(Json<ApiKeyList>),
}

#[OpenApi(tag = "ApiTags::Keys")]
impl KeysApi {
    /// Rotate your API key.
    ///
    /// Call with your current key. Returns a new key; the one you called with keeps working
    /// for the overlap (24 hours by default), so every caller can switch. A key from an
    /// earlier rotation still in its overlap stops now: to end a leaked key at once, rotate
    /// twice. A previous key cannot rotate (`403 current_key_required`).
    #[oai(path = "/keys/rotate", method = "post", operation_id = "rotate_key")]
    async fn rotate(
        &self,
        state: Data<&Arc<AppState>>,
        auth: PartnerAuth,
    ) -> ApiResult<RotatedResponse> {
        let overlap_until = Utc::now() + state.key_rotation_overlap;
        let (partner, key) = partners::rotate_key(
            &state.db,
            auth.partner().id,
            auth.key_sha256(),
            overlap_until,
        )
        .await?
        .ok_or_else(|| {
            ApiProblem::new(
                ProblemCode::CurrentKeyRequired,
                "rotate with your current key; this one is the previous key, or was \
                 rotated meanwhile",
            )
        })?;
        Ok(RotatedResponse::Created(Json(RotatedApiKey {
            key: key.expose().to_string(),
            keys: ApiKeyList::from(&partner).keys,
        })))
    }

    /// List your API keys that work now, by their first characters.
    #[oai(path = "/keys", method = "get", operation_id = "list_keys")]
    async fn list(
        &self,
        state: Data<&Arc<AppState>>,
        auth: PartnerAuth,
    ) -> ApiResult<ListResponse> {
        // Read afresh: the key the request was checked with may come from a node's cache.
        let partner = partners::find(&state.db, auth.partner().id)
            .await?
            .ok_or_else(|| ApiProblem::internal("an authenticated partner vanished"))?;
        Ok(ListResponse::Ok(Json(ApiKeyList::from(&partner))))
    }
}
