//! Partner authentication: `Authorization: Bearer <key>` or `X-API-Key: <key>`.

use std::sync::Arc;

use entity::partner;
use poem::Request;
use poem_openapi::{auth, SecurityScheme};

use super::{problem::ApiProblem, AppState};

async fn check(req: &Request, key: &str) -> poem::Result<partner::Model> {
    let state = req
        .data::<Arc<AppState>>()
        .ok_or_else(|| ApiProblem::internal("application state missing"))?;
    match crate::store::partners::authenticate(&state.db, key).await {
        Ok(Some(partner)) => Ok(partner),
        Ok(None) => Err(ApiProblem::new(
            poem::http::StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the API key is unknown or revoked",
        )
        .into()),
        Err(err) => Err(ApiProblem::from(err).into()),
    }
}

async fn check_bearer(req: &Request, bearer: auth::Bearer) -> poem::Result<partner::Model> {
    check(req, &bearer.token).await
}

async fn check_api_key(req: &Request, key: auth::ApiKey) -> poem::Result<partner::Model> {
    check(req, &key.key).await
}

/// An API key sent as a bearer token.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", checker = "check_bearer")]
pub struct BearerKey(partner::Model);

/// An API key sent in the `X-API-Key` header.
#[derive(SecurityScheme)]
#[oai(
    ty = "api_key",
    key_name = "X-API-Key",
    key_in = "header",
    checker = "check_api_key"
)]
pub struct HeaderKey(partner::Model);

#[derive(SecurityScheme)]
pub enum PartnerAuth {
    Bearer(BearerKey),
    Header(HeaderKey),
}

impl PartnerAuth {
    pub fn partner(&self) -> &partner::Model {
        match self {
            Self::Bearer(BearerKey(p)) | Self::Header(HeaderKey(p)) => p,
        }
    }
}
