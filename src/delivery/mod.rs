//! Webhook delivery to partners. So far: Standard Webhooks signing; the outbox, the
//! delivery workers and retries come with the job lifecycle.

pub mod signing;
