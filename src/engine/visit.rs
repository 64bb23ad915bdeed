//! What an adapter (HTTP, gRPC, `Range`, a typed read, a background refresh) tells the
//! lookup loop: what its request is keyed by and what a stored entry means to it.

use std::ops::ControlFlow;
use std::sync::Arc;

use http::HeaderMap;

use crate::engine::coalesce::Share;
use crate::engine::fill::{Fill, FillBody};
use crate::engine::{Found, Ticket};
use crate::headers::{Forward, Waited};
use crate::key::Variant;

/// An adapter's part in the lookup loop ([`look`](super::look)): what its request is keyed by and what
/// a stored entry means to it. `A` is the answer it gives (a response for HTTP and gRPC,
/// a value for typed reads).
pub(crate) trait Lookup<A>: Sized {
    /// The request's logical key, variant and headers.
    fn key(&self) -> (&str, &Variant, &HeaderMap);

    /// What a lookup's `found` means to this request: an answer (`Break`), or on to the
    /// origin (`Continue`), with what the lookup found to say so (`Cache-Status`'s `fwd`).
    /// `waited`: whether it waited for another request's fetch first.
    fn weigh(self, found: Found, waited: Waited) -> Weighed<Self, A>;

    /// Called with a ticket taken just before each lookup: an entry the lookup finds and
    /// the adapter may write back (validated) is written with it.
    fn looking_up(&mut self, ticket: Ticket) {
        let _ = ticket;
    }

    /// Whether this request may lead a flight (one whose answer is never stored, a HEAD,
    /// goes to the origin alone).
    fn may_lead(&self) -> bool {
        true
    }

    /// What a follower sending `headers` makes of its leader's answer as it arrives.
    fn share(fill: &Arc<Fill>, headers: &HeaderMap) -> Share;

    /// A follower's answer from its leader's response, read as it arrives (`reader`;
    /// `fallback`: the memory fallback serves). Only an adapter whose
    /// [`share`](Self::share) says [`Share::Read`] is asked; one that cannot answer from
    /// a response looks again (`Continue`), as this default does.
    fn read_shared(self, reader: FillBody, forward: Forward, fallback: bool) -> Weighed<Self, A> {
        let _ = (reader, fallback);
        ControlFlow::Continue((self, forward))
    }
}

/// What an adapter makes of one lookup (see [`Lookup::weigh`]).
pub(crate) type Weighed<V, A> = ControlFlow<A, (V, Forward)>;
