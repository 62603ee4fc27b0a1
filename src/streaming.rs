//! Helpers for streamed responses that must reach the client frame by
//! frame.

use http::header::{HeaderMap, HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_ENCODING};

/// Sets the headers that keep proxies and browsers from buffering a
/// streamed response, so each frame is seen as soon as it is written:
///
/// - `Cache-Control: no-cache, no-transform` (no-transform also tells
///   proxies not to recompress, which would buffer);
/// - `X-Accel-Buffering: no` (nginx and compatible proxies);
/// - and removes `Content-Encoding`: a compressed stream is held back by
///   the compressor until it has a block's worth of data.
///
/// No padding is needed: with these headers, and a body that yields each
/// frame as it happens (such as `http_body_util::channel::Channel`), hyper
/// writes every frame at once.
///
/// ```
/// use http::HeaderMap;
///
/// let mut headers = HeaderMap::new();
/// tower_lifecycle::no_buffering(&mut headers);
/// assert_eq!(headers["cache-control"], "no-cache, no-transform");
/// assert_eq!(headers["x-accel-buffering"], "no");
/// ```
pub fn no_buffering(headers: &mut HeaderMap) {
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    headers.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    headers.remove(CONTENT_ENCODING);
}
