//! Enqueue limits over HTTP. The rate is counted as the caller is authenticated, before the
//! body is read. Over a limit the answer is `429` with `Retry-After` and the
//! `RateLimit-Policy` and `RateLimit` fields of draft-ietf-httpapi-ratelimit-headers-11;
//! accepted enqueues carry the two fields too while a limit applies.
//!
//! The policies: `"rate";q=<burst>;w=<seconds>` (`q` requests at once, refilled over `w`
//! seconds), and `"queue";q=<jobs>;qu="concurrent-requests"` (jobs queued or in progress at
//! once). `RateLimit` says what is left: `"rate";r=<requests>;t=<seconds until refilled>`,
//! `"queue";r=<jobs>`.

use std::sync::Arc;

use entity::partner;
use poem::{IntoResponse, Request, RequestBody};
use poem_openapi::{
    payload::Json, registry::Registry, ApiExtractor, ApiExtractorType, ExtractParamOptions,
};

use super::{
    auth::PartnerAuth,
    jobs::EnqueueResponse,
    problem::{ApiProblem, ProblemCode},
    AppState,
};
use crate::limits::{RateDecision, RateState};

/// How long a partner at its queue cap is asked to wait: a hint, since when its jobs finish
/// depends on the queue.
pub const QUEUE_FULL_RETRY_AFTER_SECONDS: u64 = 5;

const RATE_POLICY: &str = "rate";
const QUEUE_POLICY: &str = "queue";

/// The caller of an enqueue (a [`PartnerAuth`], published as the same security schemes),
/// with the request counted against its rate. Over the rate, extraction fails with the
/// `429`, so the body is never read.
pub struct EnqueueAuth {
    auth: PartnerAuth,
    rate: Option<RateState>,
}

impl EnqueueAuth {
    pub fn partner(&self) -> &partner::Model {
        self.auth.partner()
    }

    /// Where the partner's rate stands after this request; `None` when it has no rate.
    pub fn rate(&self) -> Option<&RateState> {
        self.rate.as_ref()
    }
}

impl<'a> ApiExtractor<'a> for EnqueueAuth {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <PartnerAuth as ApiExtractor>::register(registry);
    }

    fn security_schemes() -> Vec<&'static str> {
        <PartnerAuth as ApiExtractor>::security_schemes()
    }

    fn has_security_fallback() -> bool {
        <PartnerAuth as ApiExtractor>::has_security_fallback()
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let auth = <PartnerAuth as ApiExtractor>::from_request(request, body, param_opts).await?;
        let state = request
            .data::<Arc<AppState>>()
            .ok_or_else(|| ApiProblem::internal("application state missing"))?;
        let rate = match state.limits.check_rate(auth.partner()) {
            RateDecision::Unlimited => None,
            RateDecision::Allowed(rate) => Some(rate),
            RateDecision::Refused {
                state,
                retry_after_seconds,
            } => {
                let problem = ApiProblem::new(
                    ProblemCode::RateLimited,
                    format!(
                        "over your enqueue rate of {} a second (bursts of {}); retry in {} s",
                        state.policy.per_second, state.policy.burst, retry_after_seconds
                    ),
                );
                let fields = RateLimitFields::default().with_rate(&state);
                let response = too_many_requests(problem, retry_after_seconds, fields);
                return Err(poem::Error::from_response(response.into_response()));
            }
        };
        Ok(Self { auth, rate })
    }
}

/// The values of `RateLimit-Policy` and `RateLimit`: one item per policy that applies.
#[derive(Debug, Default, Clone)]
pub struct RateLimitFields {
    policies: Vec<String>,
    limits: Vec<String>,
}

impl RateLimitFields {
    pub fn with_rate(mut self, rate: &RateState) -> Self {
        self.policies.push(format!(
            "\"{RATE_POLICY}\";q={};w={}",
            rate.policy.burst,
            rate.policy.window_seconds()
        ));
        self.limits.push(format!(
            "\"{RATE_POLICY}\";r={};t={}",
            rate.remaining, rate.full_in_seconds
        ));
        self
    }

    /// A cap of `max` unfinished jobs, of which `unfinished` are taken.
    pub fn with_queue(mut self, max: u32, unfinished: u64) -> Self {
        self.policies.push(format!(
            "\"{QUEUE_POLICY}\";q={max};qu=\"concurrent-requests\""
        ));
        self.limits.push(format!(
            "\"{QUEUE_POLICY}\";r={}",
            u64::from(max).saturating_sub(unfinished)
        ));
        self
    }

    /// `RateLimit-Policy`, when a limit applies.
    pub fn policy(&self) -> Option<String> {
        (!self.policies.is_empty()).then(|| self.policies.join(", "))
    }

    /// `RateLimit`, when a limit applies.
    pub fn limit(&self) -> Option<String> {
        (!self.limits.is_empty()).then(|| self.limits.join(", "))
    }
}

/// The `429` of an enqueue over a limit.
pub fn too_many_requests(
    problem: ApiProblem,
    retry_after_seconds: u64,
    fields: RateLimitFields,
) -> EnqueueResponse {
    EnqueueResponse::TooManyRequests(
        Json(problem.to_problem()),
        retry_after_seconds,
        fields.policy().unwrap_or_default(),
        fields.limit().unwrap_or_default(),
    )
}
