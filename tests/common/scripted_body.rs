//! A hand-written response body that follows a script: data frames, then
//! maybe trailers, one frame per poll, every frame ready at once.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// How a [`ScriptedBody`] reports its size.
#[derive(Clone, Copy, Debug)]
pub enum Hint {
    /// Exact, and kept exact as it yields.
    Exact,
    /// A lower bound of half of what is left, no upper bound.
    Inexact,
    /// `SizeHint::default()`: nothing known.
    Default,
}

/// A body that yields its frames in order and then `None`. By default its
/// size is unknown and `is_end_stream` stays false, so hyper learns the end
/// only from a `Content-Length`, the request method or the status, or by
/// polling to `None`.
pub struct ScriptedBody {
    frames: VecDeque<Frame<Bytes>>,
    remaining: u64,
    hint: Hint,
    ends: bool,
}

impl ScriptedBody {
    /// Data frames with these contents.
    pub fn new<I>(chunks: I) -> ScriptedBody
    where
        I: IntoIterator,
        I::Item: Into<Bytes>,
    {
        let frames: VecDeque<_> = chunks.into_iter().map(|c| Frame::data(c.into())).collect();
        let remaining = frames
            .iter()
            .filter_map(Frame::data_ref)
            .map(|d| d.len() as u64)
            .sum();
        ScriptedBody {
            frames,
            remaining,
            hint: Hint::Default,
            ends: false,
        }
    }

    /// Reports its size as `hint` says.
    pub fn hint(self, hint: Hint) -> ScriptedBody {
        ScriptedBody { hint, ..self }
    }

    /// Reports an exact size.
    pub fn exact(self) -> ScriptedBody {
        self.hint(Hint::Exact)
    }

    /// Reports `is_end_stream` once its last frame is out, if `ends`.
    pub fn reports_end(self, ends: bool) -> ScriptedBody {
        ScriptedBody { ends, ..self }
    }

    /// Reports `is_end_stream` once its last frame is out.
    pub fn ends(self) -> ScriptedBody {
        self.reports_end(true)
    }

    /// Ends with a trailers frame.
    pub fn trailers(mut self, trailers: HeaderMap) -> ScriptedBody {
        self.frames.push_back(Frame::trailers(trailers));
        self
    }
}

impl Body for ScriptedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = self.frames.pop_front();
        if let Some(data) = frame.as_ref().and_then(Frame::data_ref) {
            self.remaining -= data.len() as u64;
        }
        Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.ends && self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        match self.hint {
            Hint::Exact => SizeHint::with_exact(self.remaining),
            Hint::Inexact => {
                let mut hint = SizeHint::new();
                hint.set_lower(self.remaining / 2);
                hint
            }
            Hint::Default => SizeHint::default(),
        }
    }
}
