//! The background refresh of an entry served stale (stale-while-revalidate, a soft purge):
//! the client already has the stale copy; one request per key, fleet-wide, asks the origin
//! again and stores the answer.
//!
//! The stale hit claims the key's flight in this process without waiting
//! ([`engine::claim_refresh`]), so a burst of stale hits starts one refresh. The refresh
//! then takes the loop's fleet step ([`engine::refresh`]): when another process is
//! refreshing the key, it waits for that process's entry instead of fetching.

use std::ops::ControlFlow;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::record;
use super::revalidate::strip_conditionals;
use super::visit::Visit;
use crate::body::BoxError;
use crate::engine::coalesce::Share;
use crate::engine::fill::Fill;
use crate::engine::Found;
use crate::engine::{self, Claim, Fetching, Miss, Weighed};
use crate::headers::{Forward, Waited};
use crate::key::Variant;

/// A refresh in the lookup loop: a fresh entry (another process's refresh) ends it, anything
/// else is fetched.
struct Refreshing<S, ReqB>(Visit<S, ReqB>);

impl<S, ReqB> engine::Lookup<()> for Refreshing<S, ReqB> {
    fn key(&self) -> (&str, &Variant, &HeaderMap) {
        let visit = &self.0;
        (&visit.logical, &visit.variant, &visit.parts.headers)
    }

    fn weigh(self, found: Found, _waited: Waited) -> Weighed<Self, ()> {
        match found {
            Found::Hit(..) => ControlFlow::Break(()),
            _ => ControlFlow::Continue((self, Forward::Stale)),
        }
    }

    /// Never asked: a refresh enters the loop holding its flight, so it follows nobody in
    /// this process.
    fn share(_fill: &Arc<Fill>, _headers: &HeaderMap) -> Share {
        Share::WaitForEntry
    }
}

/// Refresh `visit`'s key in the background under `claim`. The task runs to completion (the
/// body is drained and stored) even when no client waits.
pub(super) fn spawn<S, ReqB, ResB>(mut visit: Visit<S, ReqB>, claim: Claim)
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    // The readied service goes back: a refresh that waits for another process's holds no
    // slot of a concurrency limit or buffer inside the layer; this one readies its own
    // clone when it fetches.
    visit.inner = visit.inner.clone();
    let config = visit.config.clone();
    tokio::spawn(async move {
        let handle = &config.handle;
        let Fetching { visit, leader, .. } =
            match engine::refresh(handle.engine(), Refreshing(visit), claim).await {
                ControlFlow::Break(()) => return,
                ControlFlow::Continue(fetching) => fetching,
            };
        let Visit {
            mut inner,
            mut parts,
            body,
            logical,
            variant,
            ..
        } = visit.0;
        let ticket = handle.engine().ticket(leader.as_ref()).await;
        let request_headers = parts.headers.clone();
        strip_conditionals(&mut parts.headers);
        let request = Request::from_parts(parts, body);
        let ready = std::future::poll_fn(|cx| inner.poll_ready(cx))
            .await
            .is_ok();
        let called = match ready {
            true => inner.call(request).await.ok(),
            false => None,
        };
        let Some(response) = called else {
            tracing::debug!(key = %logical, "background refresh failed; the stale entry stays");
            // Given up, not unstorable: another refresh may run (no `pass` mark).
            drop(leader);
            return;
        };
        let miss = Miss {
            logical,
            variant,
            ticket,
            leader,
            forward: Forward::Stale,
        };
        // The fill reads the body to its end and stores it, with or without a reader.
        drop(record::response(
            &config,
            miss,
            false,
            response,
            &request_headers,
        ));
    });
}
