//! The models jobs can choose.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::{payload::Json, ApiResponse, OpenApi};

use super::{auth::PartnerAuth, dto::ModelList, problem::ApiResult, ApiTags, AppState};

pub struct ModelsApi;

#[derive(ApiResponse)]
pub enum ListResponse {
    #[oai(status = 200)]
    Ok(Json<ModelList>),
}

#[OpenApi(tag = "ApiTags::Models")]
impl ModelsApi {
    /// List the models a job can name in `model_id`.
    ///
    /// Each model's id, version, class counts and licence, which one runs when a job names
    /// none, and, on nodes that score, the runtime it runs on.
    #[oai(path = "/models", method = "get", operation_id = "list_models")]
    async fn list(
        &self,
        state: Data<&Arc<AppState>>,
        _auth: PartnerAuth,
    ) -> ApiResult<ListResponse> {
        Ok(ListResponse::Ok(Json(ModelList::new(
            &state.models,
            state.scoring.as_ref(),
        ))))
    }
}
