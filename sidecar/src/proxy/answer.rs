//! An upstream's answer before it is sent on: whether the attempt failed,
//! answered trailers-only, or sent headers — and then, when a retry could
//! still follow, what the first frames say (read ahead by `call::hold`).
//! The result either commits the call or goes to the judge.

use std::collections::VecDeque;

use bytes::Bytes;
use http::Response;
use http_body::Frame;
use http_body_util::Either;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{respond, Attempt};
use crate::call::error::{ProxyBody, ProxyError};
use crate::call::hold::{self, Held};
use crate::call::judge;
use crate::concurrency::Permit;
use crate::outcome::{CallGuard, Outcome};
use crate::response_body::{grpc_status, status_message, Observer};
use crate::upstream::{StreamSlot, Upstream};

/// How far to read a response ahead before committing to it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Hold {
    /// A unary call: hold the headers until the first frame, or until
    /// the trailers if the body stays within this many bytes
    /// (`retries.bufferResponse`; 0 = the first frame only).
    Unary(usize),
    /// A call that may stream: only look at a first frame already there.
    Peek,
}

/// An upstream's answer, not yet sent on.
pub(super) struct Answer {
    parts: http::response::Parts,
    body: Incoming,
    held: VecDeque<Frame<Bytes>>,
    guard: CallGuard,
    slot: StreamSlot,
}

/// What an attempt's answer calls for.
pub(super) enum Examined {
    /// Send it on (nothing to retry on).
    Commit(Answer),
    /// Let the judge decide; the answer to send if it says return.
    Judge(judge::Outcome, Option<Answer>),
    /// A unary answer whose headers are held until [`read_ahead`] has
    /// seen its first frame (or whole body, up to this many bytes).
    ReadAhead(Answer, usize),
}

impl Answer {
    /// The `grpc-message` of its status (headers or held trailers).
    pub(super) fn message(&self) -> String {
        if self.parts.headers.contains_key("grpc-status") {
            return status_message(&self.parts.headers);
        }
        self.held
            .back()
            .and_then(Frame::trailers_ref)
            .map(status_message)
            .unwrap_or_default()
    }

    /// The response to send the client.
    pub(super) fn respond(
        self,
        permit: Option<Permit>,
        deadline: Option<Instant>,
        observer: Observer,
    ) -> Response<ProxyBody> {
        let Self {
            parts,
            body,
            held,
            guard,
            slot,
        } = self;
        respond(
            Response::from_parts(parts, body),
            guard,
            permit,
            deadline,
            Some(observer),
            Some(slot),
        )
        .map(|body| match body {
            Either::Left(body) => Either::Left(body.with_held(held)),
            other => other,
        })
    }
}

/// Looks at what an attempt brought: a failure, a trailers-only status,
/// or headers, then (when a retry could follow) a first frame already
/// there. Never waits: a unary answer to read ahead comes back as
/// [`Examined::ReadAhead`] for [`read_ahead`].
pub(super) fn examine(
    upstream: &Upstream,
    sent: Attempt,
    read_ahead: Option<Hold>,
    slot: StreamSlot,
) -> Examined {
    let (response, mut guard) = match sent {
        Attempt::Failed { error, mut guard } => {
            guard.report(Outcome::Reset(error.message()));
            return Examined::Judge(judge::Outcome::Failed(error), None);
        }
        Attempt::Answered(response, guard) => (response, guard),
    };
    let (parts, mut body) = response.into_parts();
    // A trailers-only answer: nothing has reached the client yet.
    if let Some(code) = grpc_status(&parts.headers) {
        guard.report(Outcome::Status(code));
        let answer = Answer {
            parts,
            body,
            held: VecDeque::new(),
            guard,
            slot,
        };
        return Examined::Judge(judge::Outcome::Status(code), Some(answer));
    }
    let held = match read_ahead {
        None => Held::Streaming {
            frames: VecDeque::new(),
        },
        Some(Hold::Peek) => hold::peek(&mut body),
        Some(Hold::Unary(max_bytes)) => {
            let answer = Answer {
                parts,
                body,
                held: VecDeque::new(),
                guard,
                slot,
            };
            return Examined::ReadAhead(answer, max_bytes);
        }
    };
    conclude(upstream, parts, body, guard, slot, held)
}

/// Reads a unary answer ahead (up to `max_bytes` of DATA, until `until`),
/// holding its headers back meanwhile.
pub(super) async fn read_ahead(
    upstream: &Upstream,
    answer: Answer,
    max_bytes: usize,
    until: Option<Instant>,
) -> Examined {
    let Answer {
        parts,
        mut body,
        guard,
        slot,
        ..
    } = answer;
    let held = hold::hold(&mut body, max_bytes, until).await;
    conclude(upstream, parts, body, guard, slot, held)
}

/// What the frames read ahead say: a status to judge, a stream to
/// commit to, or a failure.
fn conclude(
    upstream: &Upstream,
    parts: http::response::Parts,
    body: Incoming,
    mut guard: CallGuard,
    slot: StreamSlot,
    held: Held,
) -> Examined {
    let (held, status) = match held {
        Held::Broken(detail) => {
            let error = ProxyError::upstream_reset(upstream.addr(), detail);
            guard.report(Outcome::Reset(error.message()));
            return Examined::Judge(judge::Outcome::Failed(error), None);
        }
        Held::Streaming { frames } => (frames, None),
        Held::Complete { frames, status } => (frames, status),
    };
    let answer = Answer {
        parts,
        body,
        held,
        guard,
        slot,
    };
    match status {
        Some(code) => Examined::Judge(judge::Outcome::Status(code), Some(answer)),
        None => Examined::Commit(answer),
    }
}
