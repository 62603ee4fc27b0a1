//! What the drop of a request that was not complete means, once the
//! connection watch had its say.

use std::io;

use super::connection::{Left, Waiting};
use crate::state::{End, Shared};
use crate::BoxError;

/// Settles a drop the layer would take for an abort (`aborted`): with a
/// watch over HTTP/1.1, a drop with the client still there is the
/// server's ([`End::cancelled`]), and a connection the layer cut at the
/// time limit is a timeout; either way not an abort. Calls off any cut the
/// request had set. Returns whether it is an abort.
pub(crate) fn settle(
    connection: &mut Option<Waiting>,
    shared: &Shared,
    aborted: bool,
    end: &mut End,
) -> bool {
    let Some(connection) = connection else {
        return aborted;
    };
    connection.cut_at(None);
    if !aborted {
        return false;
    }
    match connection.left(shared.time_limit().passed()) {
        Left::Client => true,
        Left::Server => {
            end.cancelled = true;
            false
        }
        Left::Limit => {
            shared.timed_out();
            end.cut = true;
            false
        }
    }
}

/// The error a response body ends with when the watch saw the client
/// leave: hyper drops the connection (the layer shut its socket down).
pub(crate) fn client_left() -> BoxError {
    Box::new(io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "tower_lifecycle: the client closed the connection",
    ))
}
